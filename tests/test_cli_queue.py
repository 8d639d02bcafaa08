"""`streamvace queue` against a small real HTTP + websocket server on 127.0.0.1 that speaks ComfyUI's protocol
(POST /prompt, GET /history/<id>, /ws?clientId= with JSON messages and binary preview frames)."""

import base64
import hashlib
import json
import os
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from streamvace.cli import main
from streamvace.cli.comfy_client import load_api_workflow

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _frame(payload: bytes, opcode: int) -> bytes:
    header = bytes([0x80 | opcode])
    if len(payload) < 126:
        return header + bytes([len(payload)]) + payload
    return header + bytes([126]) + struct.pack(">H", len(payload)) + payload


class FakeComfy:
    """Runs queued prompts in order on a worker thread, sending the messages a ComfyUI 0.3 server sends."""

    def __init__(self):
        self.sockets, self.history, self.queue, self.posted = {}, {}, [], []
        self.lock, self.wake = threading.Lock(), threading.Condition()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # websocket clients need "HTTP/1.1 101"

            def log_message(self, *args):
                pass

            def _json(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/prompt":
                    return self._json(404, {})
                fake.posted.append(body)
                graph = body["prompt"]
                bad = [k for k, n in graph.items() if n["class_type"] == "Missing"]
                if bad:
                    return self._json(400, {"error": {"type": "prompt_outputs_failed_validation",
                                                      "message": "Prompt outputs failed validation", "details": ""},
                                            "node_errors": {bad[0]: {"class_type": "Missing", "dependent_outputs": [],
                                                                     "errors": [{"type": "value_not_in_list",
                                                                                 "message": "Value not in list",
                                                                                 "details": "model: 'x.pt' not in []"}]}}})
                with fake.wake:
                    number = len(fake.posted) - 1
                    prompt_id = f"p{number}"
                    fake.queue.append((prompt_id, body["client_id"], graph, number))
                    fake.wake.notify()
                self._json(200, {"prompt_id": prompt_id, "number": number, "node_errors": {}})

            def do_GET(self):
                if self.path.startswith("/history/"):
                    prompt_id = self.path.split("/")[-1]
                    return self._json(200, {prompt_id: fake.history[prompt_id]} if prompt_id in fake.history else {})
                if not self.path.startswith("/ws?clientId="):
                    return self._json(404, {})
                accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + WS_GUID).encode()).digest())
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept.decode())
                self.end_headers()
                self.wfile.flush()
                client = self.path.split("=", 1)[1]
                fake.sockets[client] = self.wfile
                fake.send(client, "status", {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client})
                try:  # hold the connection until the client closes it; answer its close frame as a server must
                    while True:
                        head = self.rfile.read(2)
                        if len(head) < 2:
                            break
                        length = head[1] & 0x7F
                        if length == 126:
                            length = struct.unpack(">H", self.rfile.read(2))[0]
                        elif length == 127:
                            length = struct.unpack(">Q", self.rfile.read(8))[0]
                        self.rfile.read(4 + length)  # client frames are masked
                        if head[0] & 0x0F == 0x8:
                            with fake.lock:
                                self.wfile.write(_frame(b"", 0x8))
                                self.wfile.flush()
                            break
                except OSError:
                    pass
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._worker, daemon=True).start()

    def send(self, client, kind, data):
        with self.lock:
            self.sockets[client].write(_frame(json.dumps({"type": kind, "data": data}).encode(), 0x1))
            self.sockets[client].flush()

    def _worker(self):
        while True:
            with self.wake:
                while not self.queue:
                    self.wake.wait()
                prompt_id, client, graph, number = self.queue.pop(0)
            self.send(client, "execution_start", {"prompt_id": prompt_id})
            self.send(client, "execution_cached", {"nodes": [], "prompt_id": prompt_id})
            outputs, failed = {}, None
            for node_id, node in graph.items():
                self.send(client, "executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id})
                if node["class_type"] == "Fail":
                    failed = node_id
                    break
                for value in (1, 2, 3):
                    self.send(client, "progress", {"value": value, "max": 3, "prompt_id": prompt_id, "node": node_id})
                with self.lock:  # a binary preview frame: event 1, format 1 (JPEG), bytes
                    self.sockets[client].write(_frame(struct.pack(">II", 1, 1) + b"\xff\xd8jpeg", 0x2))
                if node["class_type"] == "SaveStream":
                    output = {"images": [{"filename": f"stream_{number:03d}.mp4", "subfolder": "streamvace",
                                          "type": "output"}], "animated": [True]}
                    outputs[node_id] = output
                    self.send(client, "executed", {"node": node_id, "display_node": node_id, "output": output,
                                                   "prompt_id": prompt_id})
            if failed:
                self.send(client, "execution_error", {"prompt_id": prompt_id, "node_id": failed, "node_type": "Fail",
                                                      "exception_message": "chunk 2 failed: out of memory\n",
                                                      "exception_type": "RuntimeError", "traceback": []})
                self.history[prompt_id] = {"outputs": {}, "status": {"status_str": "error", "completed": False}}
            else:
                self.history[prompt_id] = {"outputs": outputs, "status": {"status_str": "success", "completed": True}}
                self.send(client, "executing", {"node": None, "prompt_id": prompt_id})
                self.send(client, "execution_success", {"prompt_id": prompt_id})

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    fake = FakeComfy()
    yield fake
    fake.close()


def _workflow(tmp_path, *classes):
    graph = {str(i + 1): {"class_type": c, "inputs": {"seed": 1}} for i, c in enumerate(classes)}
    path = tmp_path / f"{'-'.join(classes)}.json"
    path.write_text(json.dumps(graph))
    return str(path)


def test_queues_n_runs_follows_them_and_reports_outputs(server, tmp_path, capsys):
    path = _workflow(tmp_path, "StreamVACESampler", "SaveStream")
    assert main(["queue", path, "--runs", "3", "--url", server.url, "--set", "1.seed=7", "--set", '1.text="a cat"',
                 "--timeout", "20"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["run 1/3 (p0)", "run 2/3 (p1)", "run 3/3 (p2)"]
    assert "output/streamvace/stream_002.mp4" in out[2]
    assert len(server.posted) == 3 and len({body["client_id"] for body in server.posted}) == 1
    assert server.posted[0]["prompt"]["1"]["inputs"] == {"seed": 7, "text": "a cat"}


def test_a_failed_run_is_reported_with_its_node_and_exit_code_1(server, tmp_path, capsys):
    assert main(["queue", _workflow(tmp_path, "StreamVACESampler", "Fail"), "-n", "2", "--url", server.url]) == 1
    err = capsys.readouterr().err
    assert "run 1/2 (p0): error: node 2 (Fail): RuntimeError: chunk 2 failed: out of memory" in err
    assert "run 2/2" in err


def test_bad_input_exits_2_with_one_line(server, tmp_path, capsys):
    cases = [([_workflow(tmp_path, "Missing")], "node 1 (Missing): Value not in list: model: 'x.pt' not in []"),
             ([str(tmp_path / "none.json")], "no such workflow file"),
             ([_workflow(tmp_path, "A"), "--set", "9.seed=1"], "no node '9'"),
             ([_workflow(tmp_path, "A"), "--runs", "0"], "--runs must be >= 1")]
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": []}))
    cases.append(([str(ui)], "UI-format"))
    for args, message in cases:
        assert main(["queue", *args, "--url", server.url]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and err[-1].startswith("streamvace queue: "), err


def test_unreachable_server_is_one_line_exit_1(tmp_path, capsys):
    fake = FakeComfy()
    url = fake.url
    fake.close()
    assert main(["queue", _workflow(tmp_path, "A"), "--url", url, "--timeout", "5"]) == 1
    assert "start ComfyUI or pass --url" in capsys.readouterr().err


def test_every_bundled_api_workflow_loads():
    folder = os.path.join(ROOT, "workflows", "api")
    names = [n for n in os.listdir(folder) if n.endswith(".json")]
    assert names
    for name in names:
        assert load_api_workflow(os.path.join(folder, name))
