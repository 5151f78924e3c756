"""The simulated provider: a real HTTP server that speaks the Anthropic Messages and
OpenAI Chat Completions wire formats, so everything runs offline through the
official SDK clients. Its answers follow a deterministic script (see ``script``);
latency, faults and an RPM limit are set per server or per request.

    python -m simulator --port 8765              # as its own process
    with start_in_thread(rpm=5) as sim: ... sim.url ...   # inside a test

    anthropic.Anthropic(base_url=sim.url, api_key="x")
    openai.OpenAI(base_url=sim.url + "/v1", api_key="x")
"""

from simulator.config import ConfigError, SimConfig
from simulator.server import Simulator, serve
from simulator.thread import SimulatorHandle, start_in_thread

__all__ = [
    "ConfigError",
    "SimConfig",
    "Simulator",
    "SimulatorHandle",
    "serve",
    "start_in_thread",
]
