"""Where the repository's parts are: the checkout, the built binaries
(FLOWPILOT_NODE_BIN / FLOWPILOT_FLEET_BIN pick other builds), the bundled
models and configs."""
import os

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NODE = os.path.join(ROOT, "target", "release", "flowpilot_node")
CLI = os.path.join(ROOT, "target", "release", "flowpilot")
FLEET = os.path.join(ROOT, "target", "release", "flowpilot_fleet")
MODELS = os.path.join(ROOT, "models")
MODEL = os.path.join(MODELS, "pointmass_flow.safetensors")
PARAMS = os.path.join(ROOT, "config", "pointmass.yaml")
LOGS = os.environ.get("FLOWPILOT_TEST_LOGS", "/tmp")
