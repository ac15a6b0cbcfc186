#!/usr/bin/env python3
"""Write link/order.txt: the functions a server runs, which the linker places together.

An idle server runs about 650 KB of the binary's 5.4 MB of code, spread over almost every
64 KiB block the kernel maps in at a time, so almost all of the code became resident. Listed
in link/order.txt, that code is laid out in one run (build.rs passes the file to the linker
where it can take it), and an idle server holds about 1 MiB of code instead of 4.6 MiB.

What this does: builds the release binary as users get it, with a map of where the linker
placed each function; runs it under Valgrind's callgrind as an MCP client would (start-up and
idling, then a session's usual calls); and writes the function around every instruction of
the binary that ran: first those of start-up and idling, then those the calls added. Needs
`valgrind`. Run it from the checkout when the idle-memory figure of the benchmark rises, and
after a change of Rust version or of Cargo.lock:

    python3 scripts/link-order.py

The names carry hashes that follow the compiler, the locked dependencies and the release
profile; the linker skips a name the build no longer has, so a stale list costs memory,
never correctness.
"""

import bisect
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, "target", "link-order")
BINARY = os.path.realpath(os.path.join(TARGET, "release", "t9-ipc"))
OUT = os.path.join(ROOT, "link", "order.txt")


class Server:
    """A `t9-ipc serve` driven over stdio, as Claude Code drives it."""

    def __init__(self, cmd, mailbox, name, push=None):
        # The environment a user's server gets: its default logging runs code too.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IPC_", "RUST_LOG"))}
        env.update(IPC_DATA_DIR=mailbox, IPC_SESSION_ID=name)
        if push:
            env["IPC_PUSH"] = push
        self.proc = subprocess.Popen(
            cmd + [BINARY, "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.next_id = 1
        # What Claude Code sends.
        self.request("initialize", {
            "protocolVersion": "2025-11-25",
            "capabilities": {"roots": {"listChanged": True}},
            "clientInfo": {"name": "claude-code", "version": "2.1.330"},
        })
        self.notify("notifications/initialized")

    def notify(self, method):
        self.write({"jsonrpc": "2.0", "method": method})

    def write(self, message):
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def request(self, method, params):
        """Sends a request and reads lines up to its answer (events before it are skipped)."""
        ident = self.next_id
        self.next_id += 1
        self.write({"jsonrpc": "2.0", "id": ident, "method": method, "params": params})
        while True:
            line = self.proc.stdout.readline()
            if not line:
                sys.exit(f"the server ended before answering {method}")
            if json.loads(line).get("id") == ident:
                return

    def call(self, tool, arguments):
        self.request("tools/call", {"name": tool, "arguments": arguments})

    def read_event(self):
        """Reads lines up to the next notification (the channel event)."""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                sys.exit("the server ended before pushing the message")
            if "method" in json.loads(line):
                return

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def profile(out_file, session):
    """Runs one server under callgrind into `out_file`; with `session`, also a session's calls."""
    valgrind = [
        "valgrind", "--tool=callgrind", "--dump-instr=yes", "--compress-pos=no",
        "--compress-strings=no", f"--callgrind-out-file={out_file}",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        mailbox = os.path.join(scratch, "ipc")
        # In a session, push on, so that a message comes as an event.
        server = Server(valgrind, mailbox, "alpha", push="on" if session else None)
        time.sleep(2)
        if session:
            other = Server([], mailbox, "beta")
            server.request("tools/list", {})
            server.call("t9_ipc_who", {})
            server.call("t9_ipc_send", {"to": "beta", "subject": "hello", "body": "a *body*"})
            other.call("t9_ipc_send", {"to": "alpha", "subject": "re: hello", "body": "ok"})
            server.read_event()
            server.call("t9_ipc_unread", {})
            server.call("t9_ipc_set_name", {"name": "gamma", "working_on": "the order file"})
            time.sleep(1)
            other.close()
        server.close()


def addresses_run(out_file):
    """The addresses of the binary's instructions that ran, from a callgrind output file."""
    ran, ours = set(), False
    with open(out_file) as f:
        for line in f:
            if line.startswith("ob="):
                ours = line[3:].strip() == BINARY
            elif ours and line.startswith("0x"):
                ran.add(int(line.split()[0], 16))
    return ran


def functions_at(addresses, link_map):
    """The names of the functions that hold these addresses, from the linker's map file.

    Rust puts each function in a section of its own, named after it (`.text.<name>`); code
    in a shared `.text` section (assembly, C) is named by the symbol at or before it.
    """
    columns = re.compile(r"^\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+ (\s*)(.*)$")
    sections, symbols = [], []
    with open(link_map) as f:
        for line in f:
            m = columns.match(line.rstrip("\n"))
            if not m:
                continue
            vma, size, indent, rest = int(m[1], 16), int(m[2], 16), len(m[3]), m[4]
            if indent == 8 and rest.endswith(")") and ":(.text" in rest:
                name = rest[rest.rindex(":(") + 2 : -1]
                sections.append((vma, vma + size, name))
            elif indent == 16 and sections and sections[-1][2] == ".text":
                symbols.append((vma, rest))
    sections.sort()
    symbols.sort()
    names = set()
    for address in addresses:
        i = bisect.bisect_right(sections, (address, float("inf"), "")) - 1
        if i < 0 or not sections[i][0] <= address < sections[i][1]:
            continue
        name = sections[i][2]
        if name == ".text":
            j = bisect.bisect_right(symbols, (address, "\uffff")) - 1
            if j >= 0:
                names.add(symbols[j][1])
            continue
        name = name[len(".text."):]
        for prefix in ("unlikely.", "hot.", "startup.", "exit.", "split."):
            name = name.removeprefix(prefix)
        names.add(name)
    return names


def main():
    link_map = os.path.join(TARGET, "t9-ipc.map")
    # The build users get, plus the map of where the linker placed each function.
    env = dict(os.environ, T9_IPC_LINK_MAP=link_map)
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "--bin", "t9-ipc", "--target-dir", TARGET],
        cwd=ROOT, env=env, check=True,
    )
    with tempfile.TemporaryDirectory() as scratch:
        idle, calls = os.path.join(scratch, "idle.out"), os.path.join(scratch, "calls.out")
        profile(idle, session=False)
        profile(calls, session=True)
        first = functions_at(addresses_run(idle), link_map)
        then = functions_at(addresses_run(calls), link_map) - first
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write("# Written by scripts/link-order.py; read its first lines before editing.\n")
        f.write("# Start-up and idling:\n")
        f.writelines(n + "\n" for n in sorted(first))
        f.write("# A session's usual calls:\n")
        f.writelines(n + "\n" for n in sorted(then))
    print(f"{OUT}: {len(first)} + {len(then)} functions")


if __name__ == "__main__":
    main()
