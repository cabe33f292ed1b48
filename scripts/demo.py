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
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKEN_READ = "$(cat var/runtime-token)"  # what a printed command has in the token's place


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


def pasteable(args: Sequence[str], token: str) -> str:
    """`args` as one bash command line that reads the token from var/runtime-token.

    A word holding the token goes in double quotes with the token replaced by
    `$(cat var/runtime-token)`, so bash expands it when the line is pasted; every
    other word (JSON bodies, URLs) is single-quoted where needed, so nothing in it is.
    """
    words = []
    for arg in args:
        if token and token in arg:
            parts = [re.sub(r'([\\"$`])', r"\\\1", part) for part in arg.split(token)]
            words.append('"' + TOKEN_READ.join(parts) + '"')
        else:
            words.append(shlex.quote(arg))
    return " ".join(words)


def curl(*args: str, token: str) -> str:
    """Run curl (printed first, the token read from its file) and return its output."""
    print(f"\n$ {pasteable(['curl', *args], token)}", flush=True)
    out = subprocess.run(["curl", "-sS", *args], check=True, capture_output=True, text=True).stdout
    print(out.strip())
    return out


def main() -> int:
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
        token = (
            os.environ.get("AGENTRT_RUNTIME_TOKEN")
            or (ROOT / "var" / "runtime-token").read_text().strip()
        )
        auth = ["-H", f"X-Runtime-Token: {token}", "-H", "Content-Type: application/json"]

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
                token=token,
            )
        )
        agent_id = created["agent_id"]

        print("\n== 2. Chat with it (curl, JSON, then streamed) ==")
        question = {"model": agent_id, "messages": [{"role": "user", "content": "Hello, agent!"}]}
        curl(*auth, f"{url}/v1/chat/completions", "-d", json.dumps(question), token=token)
        curl(
            *auth,
            "-N",
            f"{url}/v1/chat/completions",
            "-d",
            json.dumps({**question, "stream": True}),
            token=token,
        )

        print("\n== 3. The same with the official openai package ==")
        from openai import OpenAI  # the dev environment has it

        client = OpenAI(base_url=f"{url}/v1", api_key=token)
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
        header = ["-H", f"X-Runtime-Token: {token}"]
        print(
            "  "
            + pasteable(["curl", "-X", "DELETE", *header, f"{url}/v1/agents/{agent_id}"], token)
        )
        return 0
    finally:
        if system is not None:
            os.killpg(system.pid, signal.SIGINT)
            system.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
