"""The OpenAI-compatible endpoint backend against a real HTTP server on 127.0.0.1.

The server answers from a script (errors, delays, bad bodies, then a caption) so retries,
backoff, Retry-After, timeouts and the concurrency limit are checked on real sockets.
"""

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from captioning.endpoint import retry_after_s
from curate.config import _build_stages


class Script:
    """What the server does for each request, in order; the last step repeats."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.times: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def next(self, request: dict):
        with self.lock:
            self.requests.append(request)
            self.times.append(time.monotonic())
            return self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]


def reply(text="The video shows a red car on a road.", finish="stop", tokens=9, delay=0.0):
    body = {
        "id": "x",
        "object": "chat.completion",
        "model": "served-vlm",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 100, "completion_tokens": tokens, "total_tokens": 100 + tokens},
    }
    return {"status": 200, "body": json.dumps(body).encode(), "delay": delay}


def error(status, headers=None, delay=0.0):
    return {"status": status, "body": b'{"error": "busy"}', "headers": headers or {}, "delay": delay}


@pytest.fixture
def server():
    state = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            script: Script = state["script"]
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            step = script.next({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            with script.lock:
                script.in_flight += 1
                script.max_in_flight = max(script.max_in_flight, script.in_flight)
            try:
                time.sleep(step.get("delay", 0))
                self.send_response(step["status"])
                for k, v in step.get("headers", {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(step["body"])))
                self.end_headers()
                self.wfile.write(step["body"])
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)
            finally:
                with script.lock:
                    script.in_flight -= 1

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def start(*steps):
        state["script"] = Script(*steps)
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1", state["script"]

    yield start
    httpd.shutdown()
    httpd.server_close()


def clips(n=1, k=3):
    rng = np.random.default_rng(0)
    return [
        dict(clip_id=f"c{i}", frames=rng.integers(0, 256, (k, 48, 80, 3), dtype=np.uint8),
             frame_indices=list(range(k)), start_frame=0, fps=25.0, num_frames=50, duration_s=2.0, kept=True)
        for i in range(n)
    ]


def stage(url, **endpoint):
    section = {
        "backend": "endpoint",
        "model": "served-vlm",
        "max_new_tokens": 64,
        "prompt": "short",
        "endpoint": {"base_url": url, "backoff_s": 0.01, "max_backoff_s": 0.05, "api_key_env": "TEST_VLM_KEY",
                     **endpoint},
    }
    (s,) = _build_stages({"caption": section})
    s.setup()
    return s


def test_retries_5xx_and_429_then_captions(server, monkeypatch):
    monkeypatch.setenv("TEST_VLM_KEY", "sk-test")
    url, script = server(error(500), error(429, {"Retry-After": "0"}), error(503), reply())
    (c,) = stage(url).process_batch(clips(k=3))
    assert (c["caption"], c["caption_status"], c["caption_tokens"], c["caption_model"]) == (
        "A red car on a road.", "ok", 9, "served-vlm")
    assert len(script.requests) == 4
    req = script.requests[-1]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    body = req["body"]
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("served-vlm", 64, 0.0)
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url"] * 3 + ["text"]
    assert "3 frames from a 2.0-second" in parts[-1]["text"]
    url0 = parts[0]["image_url"]["url"]
    assert url0.startswith("data:image/jpeg;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url0.split(",", 1)[1])))
    assert (img.format, img.size, img.mode) == ("JPEG", (80, 48), "RGB")


def test_gives_up_after_max_retries(server):
    url, script = server(error(503))
    (c,) = stage(url, max_retries=2).process_batch(clips())
    assert (c["caption"], c["caption_status"], c["caption_tokens"]) == (None, "error", None)
    assert "HTTP 503 after 3 attempts" in c["errors"][0]
    assert len(script.requests) == 3


def test_retry_after_is_honoured(server):
    url, script = server(error(429, {"Retry-After": "0.4"}), reply())
    (c,) = stage(url, max_backoff_s=5).process_batch(clips())
    assert c["caption_status"] == "ok"
    assert script.times[1] - script.times[0] >= 0.4


def test_timeout_is_retried_then_fails(server):
    url, script = server(reply(delay=0.2), reply())
    t0 = time.monotonic()
    (c,) = stage(url, timeout_s=0.05, max_retries=1).process_batch(clips())
    assert c["caption_status"] == "ok" and len(script.requests) == 2
    url, script = server(reply(delay=0.3))
    (c,) = stage(url, timeout_s=0.05, max_retries=1).process_batch(clips())
    assert c["caption_status"] == "error" and "ReadTimeout" in c["errors"][0]
    assert len(script.requests) == 2 and time.monotonic() - t0 < 3


def test_bad_replies_fail_without_retry(server):
    bad_json = {"status": 200, "body": b"<html>not json</html>"}
    no_choices = {"status": 200, "body": b'{"choices": []}'}
    for step, message in [(bad_json, "not JSON"), (no_choices, "no choices"), (error(400), "HTTP 400")]:
        url, script = server(step)
        (c,) = stage(url).process_batch(clips())
        assert c["caption_status"] == "error" and message in c["errors"][0]
        assert len(script.requests) == 1


def test_statuses_from_the_reply(server):
    for step, status, caption in [
        (reply("The clip shows a dog running", finish="length", tokens=64), "truncated", "A dog running"),
        (reply("   ", tokens=1), "empty", None),
        (reply(None, tokens=0), "empty", None),
    ]:
        url, _ = server(step)
        (c,) = stage(url).process_batch(clips())
        assert (c["caption_status"], c["caption"]) == (status, caption)


def test_connection_refused_is_an_error(server):
    url, _ = server(reply())
    dead = url.replace(url.split(":")[-1].split("/")[0], "1")  # nothing listens on port 1
    (c,) = stage(dead, max_retries=1).process_batch(clips())
    assert c["caption_status"] == "error" and "ConnectionError after 2 attempts" in c["errors"][0]


def test_concurrency_limit(server):
    url, script = server(reply(delay=0.15))
    out = stage(url, concurrency=3).process_batch(clips(n=9))
    assert [c["caption_status"] for c in out] == ["ok"] * 9
    assert script.max_in_flight == 3  # the pool is used, and never exceeded


def test_retry_after_parsing():
    assert retry_after_s("2") == 2.0 and retry_after_s(None) is None and retry_after_s("soon") is None
    assert 0 <= retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
