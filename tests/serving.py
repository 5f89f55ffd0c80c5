"""A real `instar serve` process on 127.0.0.1 for the service tests (tests/test_server_api.py,
tests/test_web_browser.py), and the small index builds they serve."""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx

from instar import Index, list_images
from instar.presets import load_preset

FAST = {"pooling.k": "8", "features.max_keypoints": "300", "image.max_size": "256"}
# a CNN preset whose hits carry real region boxes: random VGG16 conv5_3, R-MAC grid regions stored with RPA-max
# descriptors, CA-SR re-ranking (its best region is each hit's box)
REGIONS = {"features.weights": "random:0", "image.max_size": "256", "whitening.method": "none",
           "regions.method": "rmac", "region_pooling.method": "max", "rerank.method": "ca-sr"}


def build_index(path: Path, photos: Path, preset: str, overrides: dict[str, str]) -> Path:
    with Index.create(path, load_preset(preset).with_overrides(overrides), train=list_images(photos)) as idx:
        report = idx.add(list_images(photos), root=photos)
    assert not report.failed, report.failed
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    index: Path
    log: Path
    tmp: Path      # the server's TMPDIR: uploaded queries are written here and must be deleted
    token: str | None
    allowed: Path | None = None   # a folder POST /images may add from

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(index: Path, workdir: Path, *, token: str | None = None, extra: list[str] = (),
                 env: dict[str, str] | None = None) -> Server:
    """`python -m instar.cli serve INDEX` on a free loopback port, once /health answers."""
    tmp = workdir / "server-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    log = workdir / "server.log"
    environ = {**os.environ, "TMPDIR": str(tmp), **(env or {})}
    environ.pop("INSTAR_TOKEN", None)
    if token:
        environ["INSTAR_TOKEN"] = token
    for attempt in range(3):
        port = free_port()
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "instar.cli", "serve", str(index), "--port", str(port),
                                     "--log-level", "warning", *extra], stdout=out, stderr=subprocess.STDOUT, env=environ)
        server = Server(f"http://127.0.0.1:{port}", proc, index, log, tmp, token)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                    return server
            except httpx.TransportError:
                time.sleep(0.1)
        server.stop()
        if "address already in use" not in log.read_text().lower():
            break
    raise AssertionError(f"instar serve did not start:\n{log.read_text()}")


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels but holds almost no data: a decompression bomb's
    shape, refused from its header before anything is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))
