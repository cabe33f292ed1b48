"""`make demo`: create an agent and chat with it through the gateway, with curl and with
the official `openai` package, on the offline model.

Uses the system `make run` started (gateway URL from AGENTRT_GATEWAY_URL, default
http://127.0.0.1:8080; token from ./var/runtime-token). When nothing answers there, it
starts the system itself (scripts/dev.py) for the demo and stops it afterwards. Every curl
command is printed before it runs, so it can be copied.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_system(url: str) -> subprocess.Popen[bytes]:
    port = url.rsplit(":", 1)[-1].strip("/")
    print(f"Nothing answers at {url}: starting the system (scripts/dev.py) for the demo ...")
    system = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "dev.py")],
        env={**os.environ, "AGENTRT_GATEWAY_PORT": port},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not answers(url):
        if system.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the system did not come up; run `make run` to see why")
        time.sleep(0.5)
    return system


def curl(*args: str) -> str:
    """Run curl (printed first, token hidden) and return its output."""
    shown = " ".join(shlex.quote(a) for a in args)
    print(f"\n$ curl {shown.replace(TOKEN, '$(cat var/runtime-token)')}", flush=True)
    out = subprocess.run(["curl", "-sS", *args], check=True, capture_output=True, text=True).stdout
    print(out.strip())
    return out


TOKEN = ""


def main() -> int:
    global TOKEN  # noqa: PLW0603 - read by curl() to hide the token in what is printed
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--url", default=os.environ.get("AGENTRT_GATEWAY_URL", "http://127.0.0.1:8080")
    )
    args = parser.parse_args()
    url = args.url.rstrip("/")
    if shutil.which("curl") is None:
        raise SystemExit("the demo needs curl")
    system = None if answers(url) else start_system(url)
    try:
        TOKEN = (
            os.environ.get("AGENTRT_RUNTIME_TOKEN")
            or (ROOT / "var" / "runtime-token").read_text().strip()
        )
        auth = ["-H", f"X-Runtime-Token: {TOKEN}", "-H", "Content-Type: application/json"]

        print("\n== 1. Create an agent (curl) ==")
        created = json.loads(
            curl(
                *auth,
                "-X",
                "POST",
                f"{url}/v1/agents",
                "-d",
                json.dumps(
                    {
                        "name": f"Demo agent {time.strftime('%H:%M:%S')}",
                        "template_id": "conversation",
                        "system_prompt": "You are a helpful demo agent.",
                        "status": "active",
                    }
                ),
            )
        )
        agent_id = created["agent_id"]

        print("\n== 2. Chat with it (curl, JSON, then streamed) ==")
        question = {"model": agent_id, "messages": [{"role": "user", "content": "Hello, agent!"}]}
        curl(*auth, f"{url}/v1/chat/completions", "-d", json.dumps(question))
        curl(
            *auth,
            "-N",
            f"{url}/v1/chat/completions",
            "-d",
            json.dumps({**question, "stream": True}),
        )

        print("\n== 3. The same with the official openai package ==")
        from openai import OpenAI  # the dev environment has it

        client = OpenAI(base_url=f"{url}/v1", api_key=TOKEN)
        print(f'client = OpenAI(base_url="{url}/v1", api_key=<runtime token>)')
        reply = client.chat.completions.create(
            model=agent_id, messages=[{"role": "user", "content": "What can you do?"}]
        )
        print(f"reply:  {reply.choices[0].message.content!r}")
        print(f"usage:  {reply.usage}")
        print(f"task:   {getattr(reply, 'metadata', None)}")
        print("stream: ", end="")
        for chunk in client.chat.completions.create(
            model=agent_id,
            messages=[{"role": "user", "content": "Stream this answer, please."}],
            stream=True,
            stream_options={"include_usage": True},
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
            if chunk.usage is not None:
                print(f"\nusage:  {chunk.usage}")
        print(f"\nThe agent {agent_id} stays; delete it with:")
        header = '-H "X-Runtime-Token: $(cat var/runtime-token)"'
        print(f"  curl -X DELETE {header} {url}/v1/agents/{agent_id}")
        return 0
    finally:
        if system is not None:
            os.killpg(system.pid, signal.SIGINT)
            system.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
