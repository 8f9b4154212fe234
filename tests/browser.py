"""Headless Chromium for the tests: open a local HTML file and report what a browser saw.

The system's Chromium (Debian's `chromium` package; `.ci/run` installs it) is driven over the
DevTools protocol with `websocket-client`; no browser is downloaded. `render(path)` returns the
requests the page made, its console errors and uncaught exceptions, every image's load state,
and what the claims card says. `python tests/browser.py PAGE.html OUT.png` saves a screenshot.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# Flags that let Chromium start headless as root in a container, with nothing of its own
# reaching the network (updates, sync, field trials) so that every request seen is the page's.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-port=0", "--remote-allow-origins=*")
START_TIMEOUT = 60  # seconds for Chromium to open its DevTools port on a busy 2-core machine


def executable() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One Chromium process with one page, driven by DevTools commands; a context manager."""

    def __init__(self, width: int = 1280, height: int = 900):
        self.size = (width, height)
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def __enter__(self):
        import websocket

        exe = executable()
        if exe is None:
            raise RuntimeError("no chromium on PATH (Debian: apt-get install -y chromium)")
        self.profile = tempfile.mkdtemp(prefix="mixerbench-chromium-")
        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={self.profile}",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:] \
                    if self.proc.poll() is not None else "timed out"
                self.__exit__()
                raise RuntimeError(f"chromium did not start: {err}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60,
                                              suppress_origin=True)
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=self.size[0],
                  height=self.size[1], deviceScaleFactor=1, mobile=False)
        return self

    def __exit__(self, *exc):
        if getattr(self, "ws", None) is not None:
            try:
                self.ws.close()
            except Exception:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def send(self, method: str, **params) -> dict:
        """Run one DevTools command and return its result; events that arrive meanwhile are kept."""
        mid = next(self.ids)
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 60) -> dict:
        """The first `event` (kept or still to come)."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events:
                if e["method"] == event:
                    return e
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
            if time.monotonic() > deadline:
                raise TimeoutError(event)

    def open(self, path: str | os.PathLike) -> None:
        self.events.clear()
        self.send("Page.navigate", url=Path(path).resolve().as_uri())
        self.wait_for("Page.loadEventFired")

    def js(self, expression: str):
        out = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in out:
            raise RuntimeError(out["exceptionDetails"])
        return out["result"].get("value")

    def screenshot(self, out: str | os.PathLike) -> None:
        png = self.send("Page.captureScreenshot", format="png")["data"]
        Path(out).write_bytes(base64.b64decode(png))


def render(path: str | os.PathLike) -> dict:
    """Open `path` in headless Chromium and report: `requests` (every URL the page asked for),
    `errors` (console errors, log errors, uncaught exceptions), `images` (src prefix, complete,
    natural width), `claims` (id, verdict and comparison verdicts of each claim card)."""
    with Browser() as b:
        b.open(path)
        images = b.js("[...document.images].map(i => [i.src.slice(0, 30), i.complete, "
                      "i.naturalWidth])")
        claims = b.js("[...document.querySelectorAll('[data-claim]')].map(e => [e.dataset.claim,"
                      " e.dataset.verdict, [...e.querySelectorAll('.comparisons > li > .badge')]"
                      ".map(s => s.textContent)])")
        anchors = b.js("[...document.querySelectorAll('a[href^=\"#\"]')].filter(a => "
                       "!document.getElementById(decodeURIComponent(a.hash.slice(1))))"
                       ".map(a => a.hash)")
        time.sleep(0.5)  # late console messages
        b.js("1")
        events = b.events
    requests = [e["params"]["request"]["url"] for e in events
                if e["method"] == "Network.requestWillBeSent"]
    errors = [e["params"] for e in events
              if (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
              or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
              or e["method"] == "Runtime.exceptionThrown"]
    return dict(requests=requests, errors=errors, images=images, claims=claims,
                broken_anchors=anchors)


def screenshot(page: str | os.PathLike, out: str | os.PathLike, width: int = 1280,
               height: int = 1600) -> None:
    with Browser(width, height) as b:
        b.open(page)
        b.screenshot(out)


if __name__ == "__main__":
    screenshot(sys.argv[1], sys.argv[2])
