"""``glee app``: a local web app for GLEE -- image segmentation (classes, expressions, clicks and boxes), video
tracking, and chat segmentation with the LLM bridge -- served by Starlette with a hand-written page.

Start it with ``glee app`` (or ``python -m llm_bridge.app``) and open the printed address.  Everything runs
offline: the page loads nothing from outside the server, and the default models are the bundled ones (or,
until those ship, random tiny models under an "untrained demo weights" banner).

Python::

    from llm_bridge.app import AppConfig, build_registry, create_app
    app = create_app(build_registry(glee_paths=["GLEE_Lite_joint.pth"]), AppConfig(max_upload_mb=10))
"""

from llm_bridge.app.cli import main
from llm_bridge.app.config import AppConfig
from llm_bridge.app.models import ModelChoice, ModelRegistry, build_registry
from llm_bridge.app.server import RunningServer, create_app

__all__ = ["AppConfig", "ModelChoice", "ModelRegistry", "RunningServer", "build_registry", "create_app", "main"]
