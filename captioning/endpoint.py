"""OpenAI-compatible chat endpoint backend (a vLLM, SGLang, TGI or hosted server the user runs).

Frames go as base64 JPEG `image_url` parts of one user message, which every OpenAI-compatible
multimodal server accepts. Requests run on a bounded thread pool, so one actor never has more
than `concurrency` requests in flight. Overload and server errors (429, 5xx, dropped or timed-out
connections) are retried with exponential backoff and jitter, honouring Retry-After; anything
else (a 4xx, a reply that is not the expected JSON) fails that clip at once, since retrying
would give the same answer.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime

import requests

from captioning.vlm import Generation, Request

log = logging.getLogger(__name__)


class EndpointError(RuntimeError):
    """A request that failed for good (after retries where retrying made sense)."""


def jpeg_data_url(frame, quality: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def retry_after_s(value: str | None) -> float | None:
    """Retry-After is either seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class EndpointCaptioner:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        jpeg_quality: int = 90,
        extra_body: dict | None = None,
        system_prompt: str | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout = (connect_timeout_s, timeout_s)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.jpeg_quality = jpeg_quality
        self.system_prompt = system_prompt
        self.params = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, **(extra_body or {})}
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=concurrency)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["Content-Type"] = "application/json"
        key = os.environ.get(api_key_env)
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="caption-endpoint")

    def body(self, req: Request) -> dict:
        content = [{"type": "image_url", "image_url": {"url": jpeg_data_url(f, self.jpeg_quality)}} for f in req.frames]
        content.append({"type": "text", "text": req.prompt})
        messages = [{"role": "user", "content": content}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return {"model": self.model, "messages": messages, **self.params}

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter; a server's Retry-After wins, both capped."""
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        return min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)

    def _post(self, body: dict) -> dict:
        for attempt in range(self.max_retries + 1):
            last_try = attempt == self.max_retries
            try:
                resp = self.session.post(self.url, json=body, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as e:
                if last_try:
                    raise EndpointError(f"{type(e).__name__} after {attempt + 1} attempts: {e}") from e
                time.sleep(self._delay(attempt, None))
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                if last_try:
                    raise EndpointError(f"HTTP {resp.status_code} after {attempt + 1} attempts: {resp.text[:200]}")
                time.sleep(self._delay(attempt, retry_after_s(resp.headers.get("Retry-After"))))
                continue
            if resp.status_code != 200:
                raise EndpointError(f"HTTP {resp.status_code}: {resp.text[:200]}")
            try:
                return resp.json()
            except ValueError as e:
                raise EndpointError(f"reply is not JSON: {resp.text[:200]!r}") from e
        raise AssertionError("unreachable")

    def caption_one(self, req: Request) -> Generation:
        reply = self._post(self.body(req))
        try:
            choice = reply["choices"][0]
            text = choice["message"].get("content") or ""
            finish = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError) as e:
            raise EndpointError(f"reply has no choices[0].message: {str(reply)[:200]}") from e
        usage = reply.get("usage") or {}
        tokens = usage.get("completion_tokens")
        return Generation(text=text, tokens=tokens, finished=finish != "length")

    def generate(self, requests_: list[Request]) -> list[Generation | Exception]:
        """One result per request, in order; a request that failed for good gives its exception."""

        def run(req: Request) -> Generation | Exception:
            try:
                return self.caption_one(req)
            except EndpointError as e:
                log.warning("caption request failed: %s", e)
                return e

        return list(self.pool.map(run, requests_))
