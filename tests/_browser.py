"""A headless Chromium driven over its DevTools protocol, shared by the report tests: open a
page, collect console errors and exceptions, and measure every `data-plot` element."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_INSTALL = "apt-get install -y chromium"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chromium-headless-shell")


def chromium_binary() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "the report test needs a headless Chromium and none is installed (looked for "
        f"{', '.join(CHROMIUM_NAMES)}). Install it with: {CHROMIUM_INSTALL}",
        pytrace=False,
    )


# Moves the pipe ends the browser talks through to descriptors 3 (its input) and 4 (its output),
# where --remote-debugging-pipe expects them, then becomes the browser.
_PIPE_LAUNCHER = (
    "import fcntl, os, sys\n"
    "a = fcntl.fcntl(int(sys.argv[1]), fcntl.F_DUPFD, 10)\n"
    "b = fcntl.fcntl(int(sys.argv[2]), fcntl.F_DUPFD, 10)\n"
    "os.dup2(a, 3); os.dup2(b, 4); os.close(a); os.close(b)\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)


class DevTools:
    """A minimal client of the browser's DevTools protocol over --remote-debugging-pipe:
    JSON messages separated by NUL bytes, commands answered by id, events collected."""

    def __init__(self, binary: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="autotelic-chromium-")
        to_browser_read, self.to_browser = os.pipe()
        self.from_browser, from_browser_write = os.pipe()
        for fd in (self.to_browser, self.from_browser):
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        command = [
            sys.executable, "-c", _PIPE_LAUNCHER, str(to_browser_read), str(from_browser_write),
            binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--remote-debugging-pipe", f"--user-data-dir={self.profile}", "--window-size=1280,900",
            "about:blank",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            pass_fds=(to_browser_read, from_browser_write),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self.buffer = b""
        self.last_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> Any:
        self.last_id += 1
        message: dict[str, Any] = {"id": self.last_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 60
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the browser did not answer within 60 s")
            ready, _, _ = select.select([self.from_browser], [], [], left)
            if ready:
                chunk = os.read(self.from_browser, 1 << 20)
                if not chunk:
                    raise EOFError("the browser closed its DevTools pipe")
                self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def problems(self) -> list[dict[str, Any]]:
        """Exceptions, console errors and browser log errors seen so far."""
        bad = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            thrown = method == "Runtime.exceptionThrown"
            console = method == "Runtime.consoleAPICalled" and params.get("type") in (
                "error",
                "assert",
            )
            logged = method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error"
            if thrown or console or logged:
                bad.append(event)
        return bad

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, EOFError, TimeoutError):
            self.send("Browser.close")
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.to_browser)
        os.close(self.from_browser)
        shutil.rmtree(self.profile, ignore_errors=True)


PLOT_SIZES = """JSON.stringify(Array.from(document.querySelectorAll('[data-plot]')).map(
function (e) {
  var box = e.getBoundingClientRect();
  return {id: e.id, plot: e.getAttribute('data-plot'), width: box.width, height: box.height,
          loaded: e.tagName !== 'IMG' || (e.complete && e.naturalWidth > 0)};
}))"""


def open_page(browser: DevTools, page: Path) -> str:
    """A new tab showing `page`, loaded; returns its session id."""
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"
    ]
    for domain in ("Runtime", "Log", "Page"):
        browser.send(f"{domain}.enable", session=session)
    browser.send("Page.navigate", {"url": page.resolve().as_uri()}, session)
    deadline = time.monotonic() + 60
    while browser.evaluate(session, "location.protocol + document.readyState") != "file:complete":
        assert time.monotonic() < deadline, f"{page} did not finish loading"
        time.sleep(0.1)
    return session


def check_plots(plots: list[dict[str, Any]], expected: set[str]) -> None:
    assert {p["plot"] for p in plots} >= expected, plots
    for plot in plots:
        assert plot["width"] > 0 and plot["height"] > 0 and plot["loaded"], plot
    assert len({p["id"] for p in plots}) == len(plots), "plot ids repeat"
