"""A real ComfyUI server started headless on the loopback for the host tests, and a small client for it
(HTTP with urllib, a minimal WebSocket reader: only the standard library, so any test venv can drive it)."""

import base64
import json
import os
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

FINISHED = ("execution_success", "execution_error", "execution_interrupted")
BINARY = "binary"  # the kind ws.receive() gives a binary message (previews), its payload as the data


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ComfyUIServer:
    """`python main.py --cpu` of a ComfyUI checkout, with models, custom nodes, input and output under base_dir."""

    def __init__(self, comfyui_path: str, python: str, base_dir: str, start_timeout: float = 90):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(base_dir, "comfyui.log")
        command = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--base-directory", base_dir, "--database-url", "sqlite:///:memory:",
                   "--disable-metadata"]  # no prompt in the PNGs: equal frames give equal files
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=comfyui_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats")
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {start_timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate the server process (and only it)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        """Everything the server printed so far."""
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the server log, for assertion messages."""
        return "\n".join(self.log().splitlines()[-lines:])

    def get_bytes(self, path: str) -> bytes:
        """GET a path, raw body."""
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return response.read()

    def get_json(self, path: str):
        """GET a path, JSON body."""
        return json.loads(self.get_bytes(path))

    def post_json(self, path: str, body) -> tuple:
        """POST JSON; (status, parsed body or None), also for 4xx answers."""
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        return status, json.loads(raw) if raw.strip() else None

    def view(self, image: dict) -> bytes:
        """The file behind an image entry of /history outputs."""
        return self.get_bytes("/view?" + urllib.parse.urlencode(
            {k: image[k] for k in ("filename", "subfolder", "type")}))

    def run(self, graph: dict, on_message=None, timeout: float = 180, refused_hint: str = "", previews=None) -> dict:
        """Queue an API graph (it must pass validation), follow it over the WebSocket until it finishes; its
        /history entry. on_message(type, data, prompt_id) sees every message of this prompt while it runs;
        `previews` (a list) receives the binary preview messages sent to this client meanwhile, as bytes."""
        client_id = f"streamvace-test-{time.monotonic_ns()}"
        with _WebSocket(self.port, client_id, timeout) as ws:
            status, answer = self.post_json("/prompt", {"prompt": graph, "client_id": client_id})
            assert status == 200 and not answer.get("node_errors"), \
                f"the graph was refused: {json.dumps(answer, indent=1)}\n{refused_hint}"
            prompt_id = answer["prompt_id"]
            while True:
                kind, data = ws.receive()
                if kind == BINARY:
                    if previews is not None:
                        previews.append(data)
                    continue
                if isinstance(data, dict) and data.get("prompt_id") == prompt_id:
                    if on_message is not None:
                        on_message(kind, data, prompt_id)
                    if kind in FINISHED:
                        break
        deadline = time.monotonic() + 10  # the history entry is written just after the last message
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            if prompt_id in history:
                return history[prompt_id]
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} finished but has no /history entry")


class _WebSocket:
    """Just enough of RFC 6455 to read ComfyUI's messages: JSON text frames and binary (preview) frames."""

    def __init__(self, port: int, client_id: str, timeout: float):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += self._read(1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"WebSocket upgrade refused: {head[:200]!r}")

    def _read(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("ComfyUI closed the WebSocket")
            data += chunk
        return data

    def receive(self) -> tuple:
        """The next message: (type, data) for JSON, (BINARY, payload bytes) for a binary frame."""
        while True:
            first, second = self._read(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(length)
            if first & 0x0F == 0x1:
                message = json.loads(payload)
                return message.get("type"), message.get("data")
            if first & 0x0F == 0x2:
                return BINARY, payload

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.sock.sendall(b"\x88\x80" + os.urandom(4))  # a masked, empty close frame
        finally:
            self.sock.close()


def png_size(png: bytes) -> tuple:
    """(width, height) from a PNG's IHDR chunk."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", png[16:24])
