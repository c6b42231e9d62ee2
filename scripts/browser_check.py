"""Check the MeanCache frontend extension (js/) in a real browser against a real ComfyUI server.

Not run by CI. Needs Debian's `chromium` and a ComfyUI checkout with its venv:

    python scripts/browser_check.py                     # starts ComfyUI on 127.0.0.1:8199 (temp dirs)
    python scripts/browser_check.py --url http://127.0.0.1:8188   # use a running server with this pack

What it does (headless chromium, driven over the Chrome DevTools Protocol; stdlib only):
  1. /extensions serves js/meancache.js and js/presets.js; the extension registers; all four
     MeanCache node types are registered; no console error or exception mentions the pack.
  2. Loads a workflow built here and every workflows/*.json through app.loadGraphData:
     no missing-node dialog, no placeholder nodes; each Planner shows its preset's values
     and hides the custom-only widgets (or shows them for `custom`); widgets_values keep
     their length and every position that is not a custom-only widget.
  3. Changes the Planner preset the way a user edit does (widget.setValue): values follow
     the table, custom-only widgets hide/show, the node resizes, compute_steps resets to 0.
  4. Fakes an `executed` message for MeanCache Report (and Planner) with an image uploaded
     to the temp folder and a `text` list: the image loads on the node and the text shows.
  5. Runs a real graph: builds TinyZImageLoader -> MeanCache Planner (balanced, 12 steps) -> Apply ->
     KSampler (12 steps, cfg 1, euler, simple) -> MeanCache Report in the page, queues it from the page
     (app.queuePrompt), waits for the run, and checks /history, the Report's image and text on the node
     and the server log's `[MeanCache] balanced:` line. The tiny model comes from a test-only node pack
     (tests/comfyui/browser_tiny_nodes.py, copied into the temp custom_nodes; skipped with --url unless that
     server has it).
  6. Repeats the preset change with the Vue ("Nodes 2.0") renderer and checks the DOM.
Screenshots go to --out (default /tmp/meancache-browser). Exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "comfy-meancache"
NODE_TYPES = ("MeanCachePlanner", "MeanCacheApply", "MeanCacheReport", "MeanCacheCalibrate")
EXTENSION_NAME = "comfy-meancache.presets"
TINY_PACK_NAME = "meancache_browser_tiny"  # TINY_PACK_SOURCE, installed as <this>/__init__.py
TINY_PACK_SOURCE = Path(__file__).resolve().parents[1] / "tests" / "comfyui" / "browser_tiny_nodes.py"


# ----------------------------------------------------------------------------- CDP over a stdlib WebSocket


class WebSocket:
    """Just enough RFC 6455 for the DevTools protocol: text frames, fragmentation, ping."""

    def __init__(self, url: str, timeout: float = 60.0):
        u = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        head, self.buffer = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake failed: {head[:200]!r}")

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buffer)))
            if not chunk:
                raise ConnectionError("websocket closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:  # ping
                self._send_frame(0xA, payload)
                continue
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the browser")
            if opcode in (0x0, 0x1, 0x2):
                message += payload
                if b0 & 0x80:
                    return message.decode()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Page:
    """One DevTools page target: commands, events kept for inspection, JS evaluation."""

    def __init__(self, ws_url: str):
        self.ws = WebSocket(ws_url)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params):
        self.next_id += 1
        msg_id = self.next_id
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def js(self, expression: str, timeout_ms: int = 60000):
        """Evaluate an async JS function body (`return` gives the value)."""
        result = self.call(
            "Runtime.evaluate",
            expression=f"(async () => {{ {expression} }})()",
            awaitPromise=True,
            returnByValue=True,
            timeout=timeout_ms,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise RuntimeError(f"JS error: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, what: str = "condition"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with contextlib.suppress(RuntimeError):
                value = self.js(f"return ({expression});")
                if value:
                    return value
            time.sleep(0.25)
        raise TimeoutError(f"timed out waiting for {what}: {expression}")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def drain(self) -> None:
        """Collect pending events (console messages) without a command of our own."""
        self.call("Runtime.evaluate", expression="0")


# ----------------------------------------------------------------------------- helpers


def http_json(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 30.0):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(width: int = 256, height: int = 128) -> bytes:
    """A small gradient PNG (stdlib only) standing in for a report chart."""
    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 255 // width, 80, 255 - y * 255 // height))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))

    ihdr = struct.pack("!IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def upload_temp_image(base_url: str, name: str) -> dict:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png_bytes()
        + (
            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="type"\r\n\r\ntemp\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n--{boundary}--\r\n'
        ).encode()
    )
    return http_json(
        f"{base_url}/upload/image", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )


def load_presets() -> dict:
    text = (ROOT / "js" / "presets.js").read_text(encoding="utf-8")
    prefix = "export const MEANCACHE_PRESETS = Object.freeze("
    start = text.index(prefix) + len(prefix)
    return json.loads(text[start : text.rindex(");")])


PLANNER_WIDGETS = [
    "preset",
    "steps",
    "scheduler",
    "denoise",
    "compute_steps",
    "speedup",
    "gamma",
    "warmup",
    "max_gap",
    "estimator",
    "cost_source",
]


def constructed_workflow() -> dict:
    """Planners on speed (stale custom values), custom, and turbo with gamma linked; Apply, Report, Calibrate."""

    def node(node_id, type_, pos, size, inputs, outputs, widgets):
        return {
            "id": node_id,
            "type": type_,
            "pos": pos,
            "size": size,
            "flags": {},
            "order": node_id,
            "mode": 0,
            "inputs": inputs,
            "outputs": outputs,
            "properties": {"Node name for S&R": type_},
            "widgets_values": widgets,
        }

    planner_outputs = [
        {"name": "schedule", "type": "MEANCACHE_SCHEDULE", "links": [1], "slot_index": 0},
        {"name": "plan_chart", "type": "IMAGE", "links": None},
        {"name": "summary", "type": "STRING", "links": None},
    ]
    model_in = {"name": "model", "type": "MODEL", "link": None}
    sigmas_in = {"name": "sigmas", "type": "SIGMAS", "link": None, "shape": 7}
    return {
        "last_node_id": 7,
        "last_link_id": 3,
        "nodes": [
            node(
                1,
                "MeanCachePlanner",
                [50, 50],
                [360, 420],
                [model_in, sigmas_in],
                planner_outputs,
                ["speed", 30, "simple", 1.0, 0, 9.5, 5.5, 1, 2, "reuse", "prior"],
            ),
            node(
                2,
                "MeanCachePlanner",
                [50, 520],
                [360, 420],
                [model_in, sigmas_in],
                [dict(o, links=None) for o in planner_outputs],
                ["custom", 30, "simple", 1.0, 12, 3.0, 1.5, 2, 4, "meancache", "prior"],
            ),
            node(
                3,
                "MeanCacheApply",
                [480, 50],
                [300, 120],
                [model_in, {"name": "schedule", "type": "MEANCACHE_SCHEDULE", "link": 1}],
                [
                    {"name": "model", "type": "MODEL", "links": None},
                    {"name": "stats", "type": "MEANCACHE_STATS", "links": [2], "slot_index": 1},
                ],
                [False, "model device"],
            ),
            node(
                4,
                "MeanCacheReport",
                [850, 50],
                [420, 420],
                [
                    {"name": "stats", "type": "MEANCACHE_STATS", "link": 2},
                    {"name": "latent", "type": "LATENT", "link": None},
                    {"name": "images", "type": "IMAGE", "link": None, "shape": 7},
                    {"name": "schedule", "type": "MEANCACHE_SCHEDULE", "link": None, "shape": 7},
                ],
                [
                    {"name": "chart", "type": "IMAGE", "links": None},
                    {"name": "summary", "type": "STRING", "links": None},
                ],
                [],
            ),
            node(
                5,
                "MeanCacheCalibrate",
                [480, 520],
                [300, 100],
                [model_in],
                [
                    {"name": "model", "type": "MODEL", "links": None},
                    {"name": "stats", "type": "MEANCACHE_STATS", "links": None},
                ],
                ["zimage"],
            ),
            node(
                6,
                "MeanCachePlanner",
                [1320, 50],
                [360, 420],
                [model_in, sigmas_in, {"name": "gamma", "type": "FLOAT", "widget": {"name": "gamma"}, "link": 3}],
                [dict(o, links=None) for o in planner_outputs],
                ["turbo", 30, "simple", 1.0, 0, 4.0, 2.0, 3, 8, "meancache2", "prior"],
            ),
            node(
                7,
                "PrimitiveFloat",
                [1320, 520],
                [300, 80],
                [],
                [{"name": "FLOAT", "type": "FLOAT", "links": [3]}],
                [4.5],
            ),
        ],
        "links": [
            [1, 1, 0, 3, 1, "MEANCACHE_SCHEDULE"],
            [2, 3, 1, 4, 0, "MEANCACHE_STATS"],
            [3, 7, 0, 6, 2, "FLOAT"],
        ],
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


# In-page helpers, defined once per page load.
PAGE_HELPERS = r"""
window.__mc = {
  planners() { return app.graph._nodes.filter((n) => n.type === "MeanCachePlanner"); },
  node(id) { return app.graph.getNodeById(id); },
  state(node) {
    const w = {};
    for (const x of node.widgets ?? []) {
      const linked = node.inputs?.find((i) => i.widget?.name === x.name)?.link != null;
      w[x.name] = { value: x.value, hidden: !!x.hidden, optHidden: !!x.options?.hidden, type: x.type, linked };
    }
    return { id: node.id, size: [...node.size], widgets: w, values: node.serialize().widgets_values };
  },
  userSet(node, name, value) {
    const w = node.widgets.find((x) => x.name === name);
    w.setValue(value, { e: undefined, node, canvas: app.canvas });   // the canvas renderer's edit path
  },
  frame(node, scale = 1.25) {
    const c = app.canvas;
    c.ds.scale = scale;
    c.ds.offset = [-node.pos[0] + 120 / scale, -node.pos[1] + 150 / scale];
    c.setDirty(true, true);
  },
  missingDialog() {
    return [...document.querySelectorAll('.p-dialog')].some((d) => /missing nodes/i.test(d.textContent || ""));
  },
  placeholders() {
    return app.graph._nodes
      .filter((n) => n.last_serialization || !LiteGraph.registered_node_types[n.type])
      .map((n) => n.type);
  },
};
return true;
"""


class Checker:
    def __init__(self, page: Page, base_url: str, out: Path, presets: dict):
        self.page, self.base_url, self.out, self.presets = page, base_url, out, presets
        self.failures: list[str] = []
        self.checked = 0
        self.shots: list[Path] = []

    def check(self, ok: bool, what: str) -> bool:
        self.checked += 1
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            self.failures.append(what)
        return ok

    def shot(self, name: str) -> None:
        # Nodes grow to fit a new image preview one frame later (and mark only the background dirty).
        for _ in range(3):
            self.page.js("app.canvas.setDirty(true, true); return true;")
            time.sleep(0.2)
        path = self.page.screenshot(self.out / f"{name}.png")
        self.shots.append(path)
        print(f"  screenshot {path}")

    # --- Planner state -----------------------------------------------------------------------------------------

    def expect_planner(self, state: dict, label: str) -> None:
        widgets = state["widgets"]
        preset = widgets["preset"]["value"]
        table = self.presets["presets"].get(preset)
        for name in self.presets["custom_widgets"]:
            w = widgets.get(name)
            if not self.check(w is not None, f"{label}: widget {name} exists"):
                continue
            if table is not None and w["linked"]:
                self.check(not w["hidden"] and not w["optHidden"], f"{label}: linked {name} stays visible")
            elif table is not None:
                self.check(
                    w["value"] == table[name], f"{label}: {name} = {w['value']!r} (preset {preset}: {table[name]!r})"
                )
                self.check(w["hidden"] and w["optHidden"], f"{label}: {name} hidden under preset {preset}")
            else:
                self.check(not w["hidden"] and not w["optHidden"], f"{label}: {name} shown under {preset}")
        for name in ("preset", "steps", "scheduler", "denoise", "cost_source"):
            if name in widgets:
                self.check(not widgets[name]["hidden"], f"{label}: {name} stays visible")

    def expect_same_layout(self, before: list, after: list, label: str, also: tuple = ()) -> None:
        self.check(
            len(before) == len(after), f"{label}: widgets_values keeps its length ({len(before)} -> {len(after)})"
        )
        free = {PLANNER_WIDGETS.index(n) for n in (*self.presets["custom_widgets"], *also)}
        same = all(a == b for i, (a, b) in enumerate(zip(before, after)) if i not in free)
        self.check(same, f"{label}: widgets_values unchanged outside the custom-only widgets: {after}")

    # --- steps -------------------------------------------------------------------------------------------------

    def load(self, workflow: dict, name: str) -> None:
        print(f"\nworkflow {name}")
        self.page.js("document.querySelectorAll('.p-dialog-close-button').forEach((b) => b.click()); return true;")
        # The missing-models dialog is expected here (no model files); the missing-nodes one must not appear.
        self.page.js(
            f"await app.loadGraphData({json.dumps(workflow)}, true, true, {json.dumps(f'check-{Path(name).stem}')},"
            " {showMissingModelsDialog: false}); return true;"
        )
        time.sleep(0.5)
        types = sorted({n["type"] for n in workflow.get("nodes", [])})
        registered = self.page.js(f"return {json.dumps(types)}.filter((t) => !!LiteGraph.registered_node_types[t]);")
        missing = sorted(set(types) - set(registered))
        self.check(
            not missing,
            f"{name}: all node types registered ({len(types)} types){' missing ' + str(missing) if missing else ''}",
        )
        self.check(not self.page.js("return __mc.placeholders();"), f"{name}: no placeholder (missing) nodes")
        self.check(not self.page.js("return __mc.missingDialog();"), f"{name}: no missing-nodes dialog")
        saved = {n["id"]: n.get("widgets_values") for n in workflow.get("nodes", []) if n["type"] == "MeanCachePlanner"}
        saved_sizes = {n["id"]: n.get("size") for n in workflow.get("nodes", []) if n["type"] == "MeanCachePlanner"}
        for node_id, values in saved.items():
            state = self.page.js(f"return __mc.state(__mc.node({json.dumps(node_id)}));")
            label = f"{name} planner #{node_id} ({values[0] if values else '?'})"
            self.expect_planner(state, label)
            if values:
                self.expect_same_layout(values, state["values"], label)
            fit = self.page.js(f"return __mc.node({json.dumps(node_id)}).computeSize();")
            print(
                f"    size {[round(v) for v in state['size']]} (saved {saved_sizes.get(node_id)},"
                f" fits {[round(v) for v in fit]})"
            )
        # Loading must not count as an edit. (The Vue renderer itself nudges every node's pos by ~1e-5.)
        diffs = self.page.js(
            """await new Promise((r) => setTimeout(r, 500));
            const w = app.extensionManager.workflow.activeWorkflow;
            const before = w.changeTracker.initialState, now = app.graph.serialize(), diffs = [];
            for (const a of before.nodes) {
              const b = now.nodes.find((n) => n.id === a.id);
              for (const k of new Set([...Object.keys(a), ...Object.keys(b ?? {})])) {
                if (LiteGraph.vueNodesMode && k === "pos") continue;
                if (JSON.stringify(a[k]) !== JSON.stringify(b?.[k])) diffs.push(`${a.type} #${a.id} ${k}`);
              }
            }
            return diffs;"""
        )
        self.check(not diffs, f"{name}: loading changes nothing after the load itself {diffs or ''}")
        self.page.js(
            "app.canvas.ds.scale = 0.8; app.canvas.ds.offset = [40, 110]; app.canvas.setDirty(true, true); return true;"
        )
        self.shot(f"load_{Path(name).stem}")

    def preset_changes(self, node_id: int, prefix: str, vue: bool = False) -> None:
        label = f"{prefix} planner #{node_id}"
        print(f"\n{label}: preset changes ({'Vue nodes' if vue else 'canvas'} renderer)")
        setter = (
            "(n, k, v) => n.widgets.find((x) => x.name === k).callback(v)"  # the Vue renderer's edit path
            if vue
            else "(n, k, v) => __mc.userSet(n, k, v)"
        )
        self.page.js(f"window.__mcSet = {setter}; __mc.frame(__mc.node({node_id})); return true;")
        base = self.page.js(f"return __mc.state(__mc.node({node_id}));")
        for preset in [*self.presets["presets"], self.presets["custom"]][::-1]:
            self.page.js(f"__mcSet(__mc.node({node_id}), 'preset', {json.dumps(preset)}); return true;")
            state = self.page.js(f"return __mc.state(__mc.node({node_id}));")
            self.check(state["widgets"]["preset"]["value"] == preset, f"{label}: preset set to {preset}")
            self.expect_planner(state, f"{label} -> {preset}")
            self.expect_same_layout(base["values"], state["values"], f"{label} -> {preset}", also=("preset",))
            if preset == self.presets["custom"]:
                custom_height = state["size"][1]
                self.shot(f"{prefix}_custom")
                # edit a custom value, then go to a preset: the preset overwrites it, compute_steps back to 0
                self.page.js(
                    f"const n = __mc.node({node_id}); __mcSet(n, 'compute_steps', 7); __mcSet(n, 'gamma', 3.5);"
                    " return true;"
                )
            else:
                preset_height = state["size"][1]
        self.check(
            preset_height < custom_height,
            f"{label}: node shorter under a preset ({preset_height:.0f}) than custom ({custom_height:.0f})",
        )
        self.check(state["widgets"]["compute_steps"]["value"] == 0, f"{label}: compute_steps reset to 0 by a preset")
        self.shot(f"{prefix}_{preset}")
        if vue:
            self.vue_dom(node_id, preset, prefix)

    def vue_dom(self, node_id: int, preset: str, prefix: str) -> None:
        labels = self.page.js(
            f"""const el = document.querySelector('[data-node-id="{node_id}"]');
            if (!el) return null;
            return [...el.querySelectorAll('.lg-node-widget')].map((w) => w.textContent.trim().slice(0, 60));"""
        )
        if not self.check(labels is not None, f"{prefix}: Vue node #{node_id} is in the DOM"):
            return
        text = " | ".join(labels)
        print(f"    Vue widgets under {preset}: {text}")
        self.check(
            len(labels) == len(PLANNER_WIDGETS) - len(self.presets["custom_widgets"]),
            f"{prefix}: Vue node draws {len(labels)} widgets under {preset}",
        )
        self.check(
            not any(lbl.lower().startswith(("gamma", "max_gap", "warmup")) for lbl in labels),
            f"{prefix}: Vue node hides the custom-only widgets under {preset}",
        )
        self.page.js(f"__mcSet(__mc.node({node_id}), 'preset', 'custom'); return true;")
        time.sleep(0.4)
        labels = self.page.js(
            f"""const el = document.querySelector('[data-node-id="{node_id}"]');
            return [...el.querySelectorAll('.lg-node-widget')].map((w) => w.textContent.trim().slice(0, 60));"""
        )
        print(f"    Vue widgets under custom: {' | '.join(labels)}")
        self.check(
            len(labels) == len(PLANNER_WIDGETS), f"{prefix}: Vue node draws all {len(labels)} widgets under custom"
        )
        self.shot(f"{prefix}_vue_custom_dom")
        self.page.js(f"__mcSet(__mc.node({node_id}), 'preset', 'speed'); return true;")
        time.sleep(0.4)
        self.shot(f"{prefix}_vue_speed_dom")

    def links(self, node_id: int, source_id: int, name: str) -> None:
        """Unlinking a custom widget's input under a preset hides it again; linking it shows it."""
        label = f"planner #{node_id} {name} link"
        print(f"\n{label}")
        find = f"const n = __mc.node({node_id}); const slot = n.inputs.findIndex((i) => i.widget?.name === '{name}');"
        state = self.page.js(f"{find} n.disconnectInput(slot); return __mc.state(n);")
        w = state["widgets"][name]
        self.check(not w["linked"] and w["hidden"] and w["optHidden"], f"{label}: unlinked {name} hides under turbo")
        self.check(w["value"] == self.presets["presets"]["turbo"][name], f"{label}: unlinked {name} = {w['value']}")
        state = self.page.js(f"{find} __mc.node({source_id}).connect(0, n, slot); return __mc.state(n);")
        w = state["widgets"][name]
        self.check(w["linked"] and not w["hidden"] and not w["optHidden"], f"{label}: linked again, {name} shows")

    def undo_redo(self, node_id: int) -> None:
        """Undo and redo of a preset change restore the values and the widgets' visibility."""
        label = f"planner #{node_id} undo/redo"
        print(f"\n{label}")
        tracker = "app.extensionManager.workflow.activeWorkflow.changeTracker"
        node = f"__mc.node({node_id})"
        for preset in ("custom", "turbo"):
            self.page.js(f"__mc.userSet({node}, 'preset', '{preset}'); {tracker}.checkState(); return true;")
        modified = self.page.js("return app.extensionManager.workflow.activeWorkflow.isModified;")
        self.check(modified is True, f"{label}: a preset change marks the workflow modified")
        for step, preset in (("undo", "custom"), ("redo", "turbo")):
            self.page.js(f"await {tracker}.{step}(); return true;")
            state = self.page.js(f"return __mc.state({node});")  # undo reloads the graph: a new node object
            self.check(state["widgets"]["preset"]["value"] == preset, f"{label}: {step} gives preset {preset}")
            self.expect_planner(state, f"{label} after {step}")

    def executed(
        self, node_id: int, image: dict, text: str, prefix: str, progress_text: bool, vue: bool = False
    ) -> None:
        """A run's messages for one node: `progress_text` (unless a cache hit), then `executed` with its ui."""
        what = "progress_text + executed (a run)" if progress_text else "executed only (a cache hit re-sends the ui)"
        print(f"\n{prefix}: fake {what} for node #{node_id}")
        output = {
            "images": [{"filename": image["name"], "subfolder": image.get("subfolder", ""), "type": "temp"}],
            "animated": [False],
            "text": [text],
        }
        before = self.page.js(f"return __mc.node({node_id}).serialize().widgets_values ?? [];")
        self.page.js(
            f"""const node = __mc.node({node_id});
            const api = window.comfyAPI.api.api;
            __mc.frame(node, 1.0);
            if ({json.dumps(progress_text)}) {{
              api.dispatchCustomEvent('progress_text', {{nodeId: '{node_id}', text: {json.dumps(text)}}});
            }}
            api.dispatchCustomEvent('executed', {{
              node: '{node_id}', display_node: '{node_id}', output: {json.dumps(output)}, prompt_id: 'browser-check'
            }});
            return true;"""
        )
        if vue:  # the Vue renderer draws outputs as <img> in the node's DOM
            probe = (
                f"[...(document.querySelector('[data-node-id=\"{node_id}\"]')?.querySelectorAll('img') ?? [])]"
                f".filter((i) => i.src.includes({json.dumps(image['name'])}) && i.complete)"
                ".map((i) => i.naturalWidth)[0]"
            )
        else:
            probe = (
                f"(() => {{ const n = __mc.node({node_id});"
                " return n.imgs?.length && n.imgs[0].complete && n.imgs[0].naturalWidth; })()"
            )
        loaded = self.page.wait_for(probe, timeout=20, what="the ui image to load")
        self.check(loaded == 256, f"{prefix}: node #{node_id} shows the image from its ui output (width {loaded})")
        shown = self.page.js(
            f"""const n = __mc.node({node_id});
            return (n.widgets ?? []).filter((w) => w.name === '$$node-text-preview').map((w) => w.value);"""
        )
        self.check(shown == [text], f"{prefix}: node #{node_id} shows the ui text in one text preview: {shown!r}")
        on_screen = self.page.js(f"return document.body.innerText.includes({json.dumps(text.splitlines()[0])});")
        self.check(bool(on_screen), f"{prefix}: the text is on screen")
        after = self.page.js(f"return __mc.node({node_id}).serialize().widgets_values ?? [];")
        self.check(after[: len(before)] == before, f"{prefix}: the node's own widgets_values are unchanged")
        if len(after) > len(before):
            print(
                f"    note: the frontend's text preview adds {after[len(before) :]!r} after the node's widgets_values"
            )
        self.shot(f"{prefix}_executed_{node_id}")

    def real_run(self, server_log: Path | None, steps: int = 12, timeout: float = 240.0) -> None:
        """Build the tiny Z-Image graph in the page, queue it from the page, check the Report on the node."""
        prefix = "real-run"
        print(f"\n{prefix}: TinyZImageLoader -> Planner (balanced, {steps} steps) -> Apply -> KSampler -> Report")
        self.page.js("document.querySelectorAll('.p-dialog-close-button').forEach((b) => b.click()); return true;")
        empty = {"last_node_id": 0, "last_link_id": 0, "nodes": [], "links": [], "groups": [], "config": {},
                 "extra": {}, "version": 0.4}  # fmt: skip
        self.page.js(
            f"await app.loadGraphData({json.dumps(empty)}, true, true, 'check-real-run',"
            " {showMissingModelsDialog: false}); return true;"
        )
        ids = self.page.js(
            f"""const add = (type, pos, values = {{}}) => {{
              const n = LiteGraph.createNode(type);
              if (!n) throw new Error(`createNode(${{type}}) failed`);
              n.pos = pos; app.graph.add(n);
              for (const [k, v] of Object.entries(values)) {{
                const w = n.widgets.find((x) => x.name === k);
                if (!w) throw new Error(`${{type}} has no widget ${{k}}`);
                w.value = v; w.callback?.(v);
              }}
              return n;
            }};
            const link = (a, out, b, inp) => {{
              const o = a.outputs.findIndex((s) => s.name === out || s.type === out);
              const i = b.inputs.findIndex((s) => s.name === inp);
              const what = `${{a.type}}.${{out}} (${{o}}) -> ${{b.type}}.${{inp}} (${{i}})`;
              if (o < 0 || i < 0) throw new Error(`no slot: ${{what}}`);
              if (!a.connect(o, b, i)) throw new Error(`connect failed: ${{what}}`);
            }};
            const loader = add('TinyZImageLoader', [20, 60], {{weight_seed: 0}});
            const conds = add('TinyZImageConds', [20, 260]);
            const latent = add('EmptySD3LatentImage', [20, 480], {{width: 64, height: 64, batch_size: 1}});
            const planner = add('MeanCachePlanner', [340, 60]);
            __mc.userSet(planner, 'preset', 'balanced');     // as a user edit: the extension applies the preset
            __mc.userSet(planner, 'steps', {steps});
            __mc.userSet(planner, 'scheduler', 'simple');
            const apply = add('MeanCacheApply', [720, 60]);
            const sampler = add('KSampler', [720, 260], {{seed: 0, control_after_generate: 'fixed', steps: {steps},
              cfg: 1.0, sampler_name: 'euler', scheduler: 'simple', denoise: 1.0}});
            const report = add('MeanCacheReport', [1080, 60]);
            report.size = [480, 520];
            link(loader, 'model', planner, 'model');
            link(loader, 'model', apply, 'model');
            link(loader, 'model', conds, 'model');
            link(planner, 'schedule', apply, 'schedule');
            link(apply, 'model', sampler, 'model');
            link(conds, 'positive', sampler, 'positive');
            link(conds, 'negative', sampler, 'negative');
            link(latent, 'LATENT', sampler, 'latent_image');
            link(sampler, 'LATENT', report, 'latent');
            link(apply, 'stats', report, 'stats');
            app.canvas.ds.scale = 0.7; app.canvas.ds.offset = [90, 90]; app.canvas.setDirty(true, true);
            const w = __mc.state(planner).widgets;
            return {{planner: planner.id, apply: apply.id, sampler: sampler.id, report: report.id,
                    preset: w.preset.value, steps: w.steps.value}};"""
        )
        print(f"    graph built: {ids}")
        self.check(
            ids["preset"] == "balanced" and ids["steps"] == steps, f"{prefix}: planner on balanced, {steps} steps"
        )
        prompt = self.page.js("const p = await app.graphToPrompt(); return p.output;")
        print(f"    prompt: {sorted((k, v['class_type']) for k, v in prompt.items())}")
        self.check(len(prompt) == 7, f"{prefix}: the page's prompt has all 7 nodes ({len(prompt)})")
        self.shot(f"{prefix}_graph")

        started = time.time()
        queued = self.page.js(
            """const api = window.comfyAPI.api.api;
            window.__mcRun = {events: []};
            for (const t of ['execution_start', 'executed', 'execution_success', 'execution_error',
                             'execution_interrupted', 'execution_cached']) {
              api.addEventListener(t, (e) => {
                window.__mcRun?.events.push([t, JSON.parse(JSON.stringify(e.detail ?? null))]);
              });
            }
            const r = await app.queuePrompt(0);
            return {result: r ?? null, nodeErrors: app.lastNodeErrors ?? null};""",
            timeout_ms=120000,
        )
        node_errors = queued["nodeErrors"]
        self.check(not node_errors, f"{prefix}: queued from the page without node errors {node_errors or ''}")
        done = self.page.wait_for(
            "__mcRun.events.find(([t]) => ['execution_success', 'execution_error',"
            " 'execution_interrupted'].includes(t))",
            timeout=timeout, what="the prompt to finish",
        )  # fmt: skip
        events = self.page.js("return __mcRun.events;")
        print(f"    finished in {time.time() - started:.1f}s: {done[0]}; events {[e[0] for e in events]}")
        errors = [e[1] for e in events if e[0] in ("execution_error", "execution_interrupted")]
        for err in errors:
            print(f"    error: {json.dumps(err)[:600]}")
        self.check(done[0] == "execution_success" and not errors, f"{prefix}: the run succeeded (no node errored)")
        prompt_id = next((e[1].get("prompt_id") for e in events if e[0] == "execution_start"), None)
        history = http_json(f"{self.base_url}/history/{prompt_id}").get(prompt_id, {}) if prompt_id else {}
        status = history.get("status", {})
        self.check(
            status.get("status_str") == "success" and status.get("completed") is True,
            f"{prefix}: /history says {status.get('status_str')!r}, completed {status.get('completed')}",
        )
        ran = {e[1].get("node") for e in events if e[0] == "executed"}
        for name in ("planner", "report"):
            self.check(str(ids[name]) in ran, f"{prefix}: {name} #{ids[name]} sent its ui (executed)")
        hist_images = history.get("outputs", {}).get(str(ids["report"]), {}).get("images", [])
        self.check(bool(hist_images), f"{prefix}: /history has the Report's image {hist_images}")

        report = ids["report"]
        outputs = self.page.js(
            f"""const o = app.nodeOutputs?.[String({report})] ?? app.nodeOutputs?.[{report}];
            return o ? {{images: o.images ?? [], text: o.text ?? []}} : null;"""
        )
        print(f"    app.nodeOutputs[{report}]: {outputs}")
        self.check(bool(outputs and outputs["images"]), f"{prefix}: app.nodeOutputs[{report}].images is not empty")
        planner_out = self.page.js(f"return app.nodeOutputs?.[String({ids['planner']})]?.images ?? [];")
        self.check(bool(planner_out), f"{prefix}: the Planner's plan chart is in app.nodeOutputs")
        self.page.js(f"__mc.frame(__mc.node({report}), 0.9); return true;")
        width = self.page.wait_for(
            f"(() => {{ const n = __mc.node({report});"
            " return n.imgs?.length && n.imgs[0].complete && n.imgs[0].naturalWidth; })()",
            timeout=20, what="the Report image to load on the node",
        )  # fmt: skip
        src = self.page.js(f"return __mc.node({report}).imgs[0].src;")
        name = hist_images[0]["filename"] if hist_images else "?"
        self.check(
            width > 0 and name in urllib.parse.unquote(src),
            f"{prefix}: the Report node shows its chart {name} ({width}px wide, {src.split('?')[0][-40:]}...)",
        )
        texts = self.page.js(
            f"""const n = __mc.node({report});
            return (n.widgets ?? []).filter((w) => w.name === '$$node-text-preview').map((w) => w.value);"""
        )
        summary = "\n".join(str(t) for t in texts)
        print("    report text: " + summary.replace("\n", "\n                 "))
        self.check(f"{steps} steps ->" in summary, f"{prefix}: the Report's summary says '{steps} steps ->'")
        self.check("uncached" not in summary.lower(), f"{prefix}: the Report does not say the run was uncached")
        self.shot(f"{prefix}_report")
        if server_log is None:
            print("    note: no server log (--url): the [MeanCache] balanced: line is not checked")
            return
        lines = [ln for ln in server_log.read_text(errors="replace").splitlines() if "[MeanCache] balanced:" in ln]
        for ln in lines:
            print(f"    log: {ln.strip()[:200]}")
        self.check(bool(lines), f"{prefix}: the server log has the '[MeanCache] balanced:' line")

    def console_problems(self) -> None:
        self.page.drain()
        problems, ours = [], []
        for event in self.page.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                d = params.get("exceptionDetails", {})
                text = (d.get("exception", {}).get("description") or d.get("text") or "") + " " + (d.get("url") or "")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                frames = params.get("stackTrace", {}).get("callFrames", [])
                text += " " + " ".join(f.get("url", "") for f in frames)
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                text = f"{entry.get('text', '')} {entry.get('url', '')}"
            else:
                continue
            problems.append(text.strip())
            if "meancache" in text.lower():
                ours.append(text.strip())
        print(f"\nconsole: {len(problems)} error(s) in total")
        for p in problems:
            print(f"    {p[:300]}")
        self.check(not ours, f"no console error or exception from the MeanCache extension ({len(ours)})")


def start_server(comfy: Path, python: Path, port: int, work: Path) -> subprocess.Popen:
    nodes = work / "custom_nodes"
    nodes.mkdir(parents=True)
    (nodes / PACK_NAME).symlink_to(ROOT, target_is_directory=True)
    (nodes / TINY_PACK_NAME).mkdir()
    shutil.copyfile(TINY_PACK_SOURCE, nodes / TINY_PACK_NAME / "__init__.py")
    shutil.copyfile(TINY_PACK_SOURCE.with_name("tiny_models.py"), nodes / TINY_PACK_NAME / "tiny_models.py")
    (work / "extra_paths.yaml").write_text(f"meancache_browser_check:\n  custom_nodes: {nodes}\n")
    settings = work / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    for d in ("temp", "output", "input"):
        (work / d).mkdir()
    cmd = [
        str(python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--extra-model-paths-config", str(work / "extra_paths.yaml"),
        "--user-directory", str(work / "user"), "--temp-directory", str(work / "temp"),
        "--output-directory", str(work / "output"), "--input-directory", str(work / "input"),
        "--disable-auto-launch",
    ]  # fmt: skip
    log = open(work / "server.log", "w")  # noqa: SIM115
    print(f"starting ComfyUI: {' '.join(cmd)} (log {work / 'server.log'})")
    return subprocess.Popen(cmd, cwd=comfy, stdout=log, stderr=subprocess.STDOUT)


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {proc.returncode}")
        with contextlib.suppress(OSError, ValueError):
            http_json(url, timeout=5)
            return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f}s")


def start_chromium(chromium: str, url: str, profile: Path) -> tuple[subprocess.Popen, str]:
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
        f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
        "--window-size=1600,1000", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "about:blank",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    deadline = time.time() + 30
    while not port_file.exists() or not port_file.read_text().strip():
        if time.time() > deadline or proc.poll() is not None:
            raise RuntimeError("chromium did not open its DevTools port")
        time.sleep(0.2)
    port = int(port_file.read_text().split()[0])
    targets = http_json(f"http://127.0.0.1:{port}/json/list")
    page = next(t for t in targets if t.get("type") == "page")
    return proc, page["webSocketDebuggerUrl"]


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the MeanCache frontend extension in headless chromium.")
    parser.add_argument("--url", help="use this running ComfyUI (with the pack installed) instead of starting one")
    parser.add_argument("--comfy", type=Path, default=Path.home() / "comfy" / "ComfyUI", help="ComfyUI checkout")
    parser.add_argument("--python", type=Path, default=Path.home() / "comfy" / "venv" / "bin" / "python")
    parser.add_argument(
        "--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/meancache-browser"), help="screenshot folder")
    parser.add_argument("--workflows", type=Path, default=ROOT / "workflows")
    parser.add_argument("--no-vue", action="store_true", help="skip the Vue (Nodes 2.0) renderer pass")
    parser.add_argument("--keep", action="store_true", help="keep the temp server folder")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="meancache-browser-"))
    server = browser = page = None
    try:
        if args.url:
            base_url = args.url.rstrip("/")
        else:
            port = free_port()
            base_url = f"http://127.0.0.1:{port}"
            server = start_server(args.comfy, args.python, port, work)
        parsed = urllib.parse.urlparse(base_url)
        if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("--url must be a local server (127.0.0.1)")
        wait_http(f"{base_url}/object_info/MeanCachePlanner", 300, server)
        print(f"ComfyUI at {base_url}")

        presets = load_presets()
        failures: list[str] = []
        extensions = http_json(f"{base_url}/extensions")
        ours = sorted(e for e in extensions if "/meancache" in e or "/presets.js" in e)
        print(f"/extensions lists {ours}")
        for name in ("meancache.js", "presets.js"):
            if not any(e.endswith(f"/{name}") for e in ours):
                failures.append(f"/extensions does not list js/{name}")
        object_info = http_json(f"{base_url}/object_info/MeanCachePlanner")["MeanCachePlanner"]
        options = object_info["input"]["required"]["preset"]
        server_presets = options[0] if isinstance(options[0], list) else options[1].get("options")
        if list(server_presets) != [*presets["presets"], presets["custom"]]:
            failures.append(
                f"server presets {server_presets} != js/presets.js {[*presets['presets'], presets['custom']]}"
            )

        browser, ws_url = start_chromium(args.chromium, base_url, work / "chromium")
        page = Page(ws_url)
        for domain in ("Runtime", "Log", "Page"):
            page.call(f"{domain}.enable")
        page.call("Page.navigate", url=base_url + "/")
        page.wait_for(
            "window.app && window.LiteGraph && app.graph && LiteGraph.registered_node_types['MeanCacheReport']",
            timeout=120, what="the ComfyUI frontend",
        )  # fmt: skip
        time.sleep(2)
        page.js(PAGE_HELPERS)
        checker = Checker(page, base_url, args.out, presets)
        checker.failures.extend(failures)
        for f in failures:
            print(f"  [FAIL] {f}")

        print("\nextension")
        registered = page.js(f"return app.extensions.some((e) => e.name === {json.dumps(EXTENSION_NAME)});")
        checker.check(bool(registered), f"extension {EXTENSION_NAME} registered")
        types = page.js(f"return {json.dumps(NODE_TYPES)}.filter((t) => !!LiteGraph.registered_node_types[t]);")
        checker.check(list(types) == list(NODE_TYPES), f"node types registered: {types}")
        renderer = page.js("return LiteGraph.vueNodesMode;")
        print(f"  renderer: {'Vue nodes' if renderer else 'canvas'}")

        # A node created from scratch (as from the node search) starts on the default preset, widgets hidden.
        state = page.js(
            "const n = LiteGraph.createNode('MeanCachePlanner'); n.pos = [700, 500]; app.graph.add(n);"
            " const s = __mc.state(n); app.graph.remove(n); return s;"
        )
        checker.expect_planner(state, "new planner")
        checker.check(
            state["widgets"]["preset"]["value"] == presets["default"], f"new planner starts on {presets['default']}"
        )

        checker.load(constructed_workflow(), "constructed.json")
        checker.preset_changes(1, "constructed")
        checker.links(6, 7, "gamma")
        checker.undo_redo(1)
        image = upload_temp_image(base_url, "meancache_browser_check.png")
        print(f"\nuploaded {image} to the temp folder")
        report_text = "MeanCache: 12 of 30 steps call the model (2.50x)\nskipped 18, fallbacks 0"
        checker.executed(4, image, report_text, "report-run", progress_text=True)
        checker.executed(1, image, "Plan: 12/30 model calls (speed, 3.30x)", "planner-run", progress_text=True)
        checker.load(constructed_workflow(), "constructed-reloaded.json")
        checker.executed(4, image, report_text, "report-cached", progress_text=False)

        examples = sorted(args.workflows.glob("*.json")) if args.workflows.is_dir() else []
        print(f"\nexample workflows: {[p.name for p in examples] or 'none yet'}")
        for path in examples:
            workflow = json.loads(path.read_text(encoding="utf-8"))
            checker.load(workflow, path.name)
            for node in workflow.get("nodes", []):
                if node["type"] == "MeanCachePlanner":
                    checker.preset_changes(node["id"], path.stem)
                    break

        if http_json(f"{base_url}/object_info/TinyZImageLoader"):
            checker.real_run(None if args.url else work / "server.log")
        else:
            print("\nreal run skipped: this server has no TinyZImageLoader (tests/comfyui/browser_tiny_nodes.py)")

        if not args.no_vue:
            print("\nVue (Nodes 2.0) renderer")
            before = page.js("return app.extensionManager.setting.get('Comfy.VueNodes.Enabled');")
            try:
                page.js("await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', true); return true;")
                page.wait_for("LiteGraph.vueNodesMode", timeout=20, what="the Vue renderer")
                checker.load(constructed_workflow(), "constructed-vue.json")
                page.wait_for(
                    "!!document.querySelector('[data-node-id=\"1\"]')", timeout=20, what="Vue nodes in the DOM"
                )
                checker.preset_changes(1, "vue", vue=True)
                checker.executed(4, image, report_text, "vue-report-cached", progress_text=False, vue=True)
            finally:
                page.js(
                    f"await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', {json.dumps(before)});"
                    " return true;"
                )

        checker.console_problems()
        print(f"\n{checker.checked} checks, {len(checker.failures)} failed; screenshots in {args.out}")
        for f in checker.failures:
            print(f"FAILED: {f}")
        return 1 if checker.failures else 0
    finally:
        if page is not None:
            page.ws.close()
        stop(browser)
        stop(server)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
