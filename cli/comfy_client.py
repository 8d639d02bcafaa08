"""A small client for a running ComfyUI server: queue an API-format workflow, follow its websocket, collect outputs.

Speaks ComfyUI's HTTP and websocket protocol (server.py): POST /prompt {"prompt", "client_id"} -> {"prompt_id",
"number", "node_errors"} or HTTP 400 with "error" and "node_errors"; GET /history/<prompt_id>; /ws?clientId=...
sends JSON messages {"type", "data"} (execution_start, execution_cached, executing, progress, executed,
execution_success, execution_error, execution_interrupted, ...) and binary preview frames.
"""

import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field

FINISHED = ("execution_success", "execution_error", "execution_interrupted")


class ComfyError(Exception):
    """The server could not be reached or a run could not be followed."""


class PromptRejected(ValueError):
    """ComfyUI refused the workflow (HTTP 400); the message summarises its node errors."""


@dataclass
class RunResult:
    """What one queued run did."""

    prompt_id: str
    number: int = 0
    status: str = "queued"  # success | error | interrupted
    error: str = ""
    outputs: dict = field(default_factory=dict)  # node id -> the node's output dict (images, gifs, text, ...)

    def files(self) -> list:
        """Output files as 'type/subfolder/filename' strings."""
        found = []
        for output in self.outputs.values():
            for items in output.values():
                for item in items if isinstance(items, list) else []:
                    if isinstance(item, dict) and "filename" in item:
                        parts = [item.get("type", "output"), item.get("subfolder", ""), item["filename"]]
                        found.append("/".join(p for p in parts if p))
        return found


def load_api_workflow(path: str) -> dict:
    """Read an API-format workflow (node id -> {class_type, inputs}); a clear error for the UI format."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such workflow file")
    try:
        with open(path) as handle:
            graph = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    if isinstance(graph, dict) and "nodes" in graph and "links" in graph:
        raise ValueError(f"{path}: a UI-format workflow; queue its API-format twin (workflows/api/) or save it in "
                         "ComfyUI with 'Export (API)'")
    if isinstance(graph, dict) and isinstance(graph.get("prompt"), dict):
        graph = graph["prompt"]  # a saved POST body
    if not isinstance(graph, dict) or not graph or not all(
            isinstance(node, dict) and "class_type" in node for node in graph.values()):
        raise ValueError(f"{path}: not an API-format workflow (a JSON object of node id -> "
                         "{\"class_type\": ..., \"inputs\": {...}})")
    return graph


def set_input(graph: dict, assignment: str) -> None:
    """Apply 'NODE.INPUT=VALUE' (VALUE parsed as JSON when it parses, else a string) to the graph in place."""
    target, equals, value = assignment.partition("=")
    node, dot, name = target.partition(".")
    if not equals or not dot or not name:
        raise ValueError(f"--set takes NODE_ID.INPUT=VALUE, got {assignment!r}")
    if node not in graph:
        raise ValueError(f"--set {assignment}: the workflow has no node {node!r} (nodes: {', '.join(graph)})")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    graph[node].setdefault("inputs", {})[name] = parsed


def _summarise_rejection(body: dict) -> str:
    error = body.get("error", {})
    lines = [error.get("message", "the workflow was rejected") if isinstance(error, dict) else str(error)]
    for node_id, info in (body.get("node_errors") or {}).items():
        for item in info.get("errors", []):
            lines.append(f"node {node_id} ({info.get('class_type', '?')}): {item.get('message', '')}"
                         f"{': ' + item['details'] if item.get('details') else ''}")
    if isinstance(error, dict) and error.get("details") and len(lines) == 1:
        lines.append(error["details"])
    return "; ".join(lines)


class ComfyClient:
    """HTTP + websocket connection to one ComfyUI server."""

    def __init__(self, url: str = "http://127.0.0.1:8188", timeout: float = 30.0):
        parsed = urllib.parse.urlparse(url if "://" in url else "http://" + url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"--url must look like http://127.0.0.1:8188, got {url!r}")
        self.base = f"{parsed.scheme}://{parsed.netloc}"
        self.ws_url = f"{'wss' if parsed.scheme == 'https' else 'ws'}://{parsed.netloc}/ws"
        self.client_id, self.timeout, self.ws = uuid.uuid4().hex, timeout, None

    def _request(self, path: str, body: dict = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            try:
                payload = json.loads(text)
            except json.JSONDecodeError:
                payload = {"error": {"message": text.strip()[:300] or error.reason}}
            if error.code == 400 and path == "/prompt":
                raise PromptRejected(_summarise_rejection(payload)) from None
            raise ComfyError(f"{self.base}{path}: HTTP {error.code} {_summarise_rejection(payload)}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ComfyError(f"no ComfyUI answers at {self.base} ({reason}); start it or pass --url") from None

    def connect(self) -> None:
        """Open the websocket (before queueing, so no message is missed)."""
        import websocket

        try:
            self.ws = websocket.create_connection(f"{self.ws_url}?clientId={self.client_id}", timeout=self.timeout)
        except (OSError, websocket.WebSocketException) as error:
            raise ComfyError(f"no ComfyUI websocket at {self.ws_url} ({error}); start ComfyUI or pass --url") from None

    def close(self) -> None:
        """Close the websocket."""
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def queue(self, graph: dict) -> RunResult:
        """POST one run of the workflow; PromptRejected when ComfyUI refuses it."""
        answer = self._request("/prompt", {"prompt": graph, "client_id": self.client_id})
        if answer.get("node_errors"):
            raise PromptRejected(_summarise_rejection(answer))
        return RunResult(answer["prompt_id"], answer.get("number", 0))

    def history(self, prompt_id: str) -> dict:
        """The server's record of a finished run (outputs and status)."""
        return self._request(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id, {})

    def messages(self):
        """JSON websocket messages as dicts, skipping binary preview frames."""
        import websocket

        while True:
            try:
                message = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                raise ComfyError(f"no message from ComfyUI for {self.timeout:g} s; is it stuck? (--timeout)") from None
            except (OSError, websocket.WebSocketException) as error:
                raise ComfyError(f"the websocket to {self.ws_url} closed ({error})") from None
            if isinstance(message, (bytes, bytearray)):
                continue  # previews: 4-byte event type + 4-byte format + image
            try:
                yield json.loads(message)
            except json.JSONDecodeError:
                continue


def follow(client: ComfyClient, runs: list, on_event=None) -> list:
    """Follow queued runs over the websocket until each succeeded, failed or was interrupted; fill in outputs."""
    by_id = {run.prompt_id: run for run in runs}
    pending = set(by_id)
    for message in client.messages():
        kind, data = message.get("type"), message.get("data") or {}
        run = by_id.get(data.get("prompt_id"))
        if run is None:
            continue
        if on_event is not None:
            on_event(run, kind, data)
        if kind == "executed" and data.get("node") is not None:
            run.outputs[str(data["node"])] = data.get("output") or {}
        elif kind == "execution_error":
            run.status = "error"
            run.error = (f"node {data.get('node_id')} ({data.get('node_type', '?')}): "
                         f"{data.get('exception_type', 'error')}: {str(data.get('exception_message', '')).strip()}")
        elif kind == "execution_interrupted":
            run.status, run.error = "interrupted", f"interrupted in node {data.get('node_id')}"
        elif kind == "execution_success":
            run.status = "success"
        done_marker = kind == "executing" and data.get("node") is None  # how older servers say "finished"
        if (kind in FINISHED or done_marker) and run.prompt_id in pending:
            pending.discard(run.prompt_id)
            record = client.history(run.prompt_id)
            for node, output in (record.get("outputs") or {}).items():
                run.outputs.setdefault(str(node), output)
            if run.status == "queued":
                status = (record.get("status") or {}).get("status_str", "success")
                run.status = "success" if status == "success" else "error"
                run.error = run.error or ("" if run.status == "success" else f"the server reports {status}")
            if not pending:
                return runs
    return runs
