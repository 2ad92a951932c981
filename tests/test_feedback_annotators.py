"""Annotators: reply parsing, and the chat client against a real local HTTP server that speaks
the chat-completions protocol, with injected faults. `FakeChatServer` is reused by the service
tests."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from autotelic.errors import UserError
from autotelic.feedback.annotators import (
    ChatAnnotator,
    Failure,
    parse_batch_labels,
    parse_label,
)
from autotelic.feedback.store import Label

# ----------------------------------------------------------------------------- the fake server

_SINGLE = re.compile(r'While playing, the agent saw this message:\n"(.*)"\n')
_NUMBERED = re.compile(r'^(\d+)\. "(.*)"$', re.M)


def truth(caption: str) -> str:
    """The fake model's opinion: a caption mentioning gold or stairs shows progress."""
    return "helpful" if re.search(r"gold|stairs", caption) else "unhelpful"


class FakeChatServer:
    """A chat-completions endpoint on 127.0.0.1.

    faults: caption -> list of faults, one consumed per request that contains the caption:
      "429" / "500" / "503" / "400" / "401": that HTTP status (429 with Retry-After: 0)
      "malformed": HTTP 200 whose body is not JSON
      "nolabel":   HTTP 200 with a reply that holds no label
      "drop":      close the connection without answering
      "timeout":   answer nothing for `hang` seconds (longer than the client's timeout)
      "slow":      wait `slow` seconds, then answer normally
    always: faults applied to every request (e.g. {"500"}) for captions listed in `always`.
    gate: while cleared, every request waits (a stalled server).

    requests[c]  counts requests that contained caption c;
    delivered[c] counts HTTP 200 replies that carried a label for c.
    """

    def __init__(self, faults=None, always=None, hang: float = 1.0, slow: float = 0.2):
        self.faults = {c: list(f) for c, f in (faults or {}).items()}
        self.always = dict(always or {})
        self.hang, self.slow = hang, slow
        self.requests: Counter[str] = Counter()
        self.delivered: Counter[str] = Counter()
        self.order: list[str] = []  # captions in the order of their first request
        self.waiting = 0  # requests held at the gate right now
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.port = 0
        self.httpd: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()

    def kill(self) -> None:
        """Stop answering: later connections are refused."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def restart(self) -> None:
        self.start()  # same port

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length", 0))
        body = json.loads(handler.rfile.read(length))
        assert handler.path == "/v1/chat/completions"
        assert body["messages"][0]["role"] == "system"
        prompt = body["messages"][-1]["content"]
        single = _SINGLE.search(prompt)
        captions = [single.group(1)] if single else [c for _, c in _NUMBERED.findall(prompt)]
        fault = None
        with self.lock:
            self.waiting += 1
        self.gate.wait()
        with self.lock:
            self.waiting -= 1
            for caption in captions:
                if self.requests[caption] == 0:
                    self.order.append(caption)
                self.requests[caption] += 1
                queue = self.faults.get(caption)
                if fault is None and queue:
                    fault = queue.pop(0)
                if fault is None and caption in self.always:
                    fault = self.always[caption]
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._reply(handler, captions, fault, single is not None)

    def _reply(self, handler, captions, fault, single: bool) -> None:
        def send(status: int, payload: bytes, headers=()) -> None:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            for key, value in headers:
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(payload)

        if fault in ("429", "500", "503", "400", "401"):
            send(int(fault), b'{"error": {"message": "injected"}}', [("Retry-After", "0")])
            return
        if fault == "malformed":
            send(200, b'{"choices": [ {"message": ')
            return
        if fault == "drop":
            handler.close_connection = True
            handler.connection.close()
            return
        if fault == "timeout":
            time.sleep(self.hang)
            return
        if fault == "slow":
            time.sleep(self.slow)
        if fault == "nolabel":
            content = "I am not sure what to make of this message."
        elif single:
            content = (
                "Background: the message describes an event.\nAnalysis: weighing it up.\n"
                f"LABEL: {truth(captions[0])}"
            )
        else:
            lines = [f"{i + 1}: {truth(c)}" for i, c in enumerate(captions)]
            content = "Thinking about each.\n" + "\n".join(lines)
        payload = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
        }
        if fault != "nolabel":
            # Counted before the reply leaves: counted after, a client that returns as soon as
            # it has read the reply could be checked before this thread gets to count it.
            with self.lock:
                for caption in captions:
                    self.delivered[caption] += 1
        send(200, json.dumps(payload).encode())


def make_annotator(server: FakeChatServer, **overrides) -> ChatAnnotator:
    settings = {
        "base_url": server.url,
        "model": "test-model",
        "task": "Go down the stairs and collect gold.",
        "timeout": 0.6,  # "slow" (0.2 s) must beat it even on a loaded machine; "timeout" (1 s) not
        "retries": 3,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "seed": 0,
        "concurrency": 4,
        "batch_size": 8,
    }
    settings.update(overrides)
    return ChatAnnotator(**settings)


@pytest.fixture
def server():
    fake = FakeChatServer()
    yield fake
    fake.gate.set()
    fake.kill()


# ------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Background...\nAnalysis...\nLABEL: helpful", 1),
        ("LABEL: unhelpful", 0),
        ("label: Not Helpful", 0),
        ("**Label:** **helpful**", 1),
        ("Final answer: yes", 1),
        ("The answer is \\boxed{no}", 0),
        ("<label>helpful</label>", 1),
        ("Yes.", 1),
        ("  no  ", 0),
        ("Helpful", 1),
        ("<think>LABEL: unhelpful? hmm</think>\nLABEL: helpful", 1),
        ("first LABEL: unhelpful\nthen, on reflection,\nLABEL: helpful", 1),
        # never guessed:
        ("This message is helpful for the agent.", None),
        ("I am not sure.", None),
        ("", None),
        ("LABEL: helpful or LABEL: unhelpful", None),
        ("LABEL: maybe", None),
        ("yes and no", None),
    ],
)
def test_parse_label(reply, expected):
    assert parse_label(reply) == expected


def test_parse_batch_labels():
    reply = (
        "Notes: 1. is about stairs.\n1: helpful\n2: unhelpful\n3: maybe\n2. **unhelpful**\n9: yes"
    )
    assert parse_batch_labels(reply, 4) == [1, 0, None, None]


# --------------------------------------------------------------------------------- chat client


def _by_caption(outcomes):
    return {o.caption: o for o in outcomes}


def test_chat_annotator_labels_one_caption_per_request(server):
    annotator = make_annotator(server)
    captions = ["You see gold here.", "You hear a noise.", "There are stairs down here."]
    outcomes = _by_caption(annotator.annotate(captions))
    assert {c: o.label for c, o in outcomes.items()} == {
        "You see gold here.": 1,
        "You hear a noise.": 0,
        "There are stairs down here.": 1,
    }
    for outcome in outcomes.values():
        assert isinstance(outcome, Label)
        assert outcome.status == "ok" and "LABEL:" in outcome.raw_reply
        assert outcome.annotator == "chat:test-model"
        assert outcome.prompt_version == annotator.version
    assert server.requests == Counter(dict.fromkeys(captions, 1))
    annotator.close()


def test_chat_annotator_batched_requests(server):
    annotator = make_annotator(server, captions_per_request=3)
    captions = [f"caption {i} {'gold' if i % 2 else 'rock'}" for i in range(7)]
    outcomes = _by_caption(annotator.annotate(captions))
    assert [outcomes[c].label for c in captions] == [i % 2 for i in range(7)]
    assert all(server.requests[c] == 1 for c in captions)  # 3 + 3 + 1 captions, 3 requests
    annotator.close()


def test_chat_annotator_retries_transient_faults(server):
    faults = {
        "a gold": ["429", "500", "503"],
        "b rock": ["malformed", "drop"],
        "c stairs": ["timeout", "slow"],
        "d rock": ["slow"],
    }
    server.faults = {c: list(f) for c, f in faults.items()}
    annotator = make_annotator(server)
    outcomes = _by_caption(annotator.annotate(list(faults)))
    assert {c: o.label for c, o in outcomes.items()} == {
        "a gold": 1,
        "b rock": 0,
        "c stairs": 1,
        "d rock": 0,
    }
    assert server.requests == Counter({"a gold": 4, "b rock": 3, "c stairs": 2, "d rock": 1})
    assert all(server.delivered[c] == 1 for c in faults)
    annotator.close()


def test_chat_annotator_persistent_faults_become_failures_or_records(server):
    server.always = {"down": "503", "broken": "500", "rejected": "400", "babble": "nolabel"}
    annotator = make_annotator(server, retries=2, parse_retries=1)
    outcomes = _by_caption(annotator.annotate(["down", "broken", "rejected", "babble"]))
    down, broken = outcomes["down"], outcomes["broken"]
    assert isinstance(down, Failure) and down.outage and "503" in down.reason
    assert isinstance(broken, Failure) and not broken.outage and "500" in broken.reason
    assert server.requests["down"] == 3 and server.requests["broken"] == 3  # 1 + 2 retries
    rejected = outcomes["rejected"]
    assert (
        isinstance(rejected, Label) and rejected.status == "error" and "400" in rejected.raw_reply
    )
    assert server.requests["rejected"] == 1  # a rejected request is not retried unchanged
    babble = outcomes["babble"]
    assert isinstance(babble, Label) and babble.status == "unparseable" and babble.label is None
    assert babble.raw_reply.count("not sure") == 2  # asked again once; both replies kept
    annotator.close()


def test_chat_annotator_splits_a_rejected_batch_and_reasks_unlabelled(server):
    captions = ["one gold", "two rock", "three stairs"]
    server.faults = {"one gold": ["400"]}  # the batch request is rejected once
    annotator = make_annotator(server, captions_per_request=3)
    outcomes = _by_caption(annotator.annotate(captions))
    assert [outcomes[c].label for c in captions] == [1, 0, 1]
    assert server.requests == Counter(dict.fromkeys(captions, 2))  # batch, then one each
    server.faults = {"four rock": ["nolabel"]}  # batch reply without lines -> asked singly
    outcomes = _by_caption(annotator.annotate(["four rock", "five gold"]))
    assert outcomes["four rock"].label == 0 and outcomes["five gold"].label == 1
    annotator.close()


def test_chat_annotator_connection_refused_is_an_outage(server):
    annotator = make_annotator(server, retries=1)
    server.kill()
    (outcome,) = annotator.annotate(["anything"])
    assert isinstance(outcome, Failure) and outcome.outage
    server.restart()
    (outcome,) = annotator.annotate(["anything"])
    assert isinstance(outcome, Label) and outcome.status == "ok"
    annotator.close()


def test_chat_annotator_unauthorized_is_an_outage_and_cancel_stops_retries(server):
    server.always = {"secret": "401"}
    annotator = make_annotator(server, retries=50, backoff_base=5.0, backoff_max=5.0)
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    (outcome,) = annotator.annotate(["secret"], cancel=cancel)
    assert isinstance(outcome, Failure) and outcome.outage
    assert server.requests["secret"] < 50  # the 5 s backoff was cut short by cancel
    annotator.close()


def test_prompt_version_tracks_everything_that_shapes_the_question(server):
    base = make_annotator(server)
    assert base.version.startswith("classify-v1+")
    assert make_annotator(server).version == base.version
    assert make_annotator(server, task="Find the amulet.").version != base.version
    assert make_annotator(server, captions_per_request=4).version != base.version
    changed = base.prompt_template.replace("honest", "fair") + "\nBe brief."
    assert make_annotator(server, prompt_template=changed).version != base.version
    assert make_annotator(server, temperature=0.5).version == base.version  # sampling only


def test_chat_annotator_rejects_bad_settings(server):
    with pytest.raises(UserError, match="http"):
        make_annotator(server, base_url="localhost:8000")
    with pytest.raises(UserError, match="concurrency"):
        make_annotator(server, concurrency=0)
    with pytest.raises(UserError, match="caption"):
        make_annotator(server, prompt_template="no placeholder")
