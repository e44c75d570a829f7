#!/usr/bin/env python3
"""start and restart of a REAL hashserver on a real sshd "server", side by side:

  * `Host.start(config)` of an already-running service (warm Host: one agent round trip)
  * `remote_http_launcher.run(config)` of the same configuration (what seamless-remote
    calls): with this machine's client file present (it reuses that after one HTTP
    handshake, without looking at the server), and without it (rhl-inspect, rhl-verify-port
    and rhl-handshake, each one ssh session)
  * `Host.restart(config)` (stop, remove the state, start: one round trip per step, the
    launch waited for on the server) against seamless-config's way: `seamless-service-stop`,
    `seamless-service-rm` and `remote_http_launcher.run(config)`

The same configuration (seamless-config's configure_hashserver through our resolution) is
used by both. Medians and ratios are printed; nothing is asserted. Needs root (sshd).

    python benchmarks/bench_lifecycle.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median_ms  # noqa: E402
from bench_cli import CLUSTER, setup_client, timed  # noqa: E402
from tests.support.sshd import SshServer  # noqa: E402

VENV_BIN = Path(sys.executable).parent
AGENT_BIN = ".local/share/seamless-service/agent-venv/bin"


def real_services_on_path(server: SshServer) -> None:
    """The real hashserver (this venv's code, run by the server user's Python) and the
    agent venv's rhl-* helpers first on the server user's PATH (bash reads ~/.bashrc for
    ssh commands), as on a cluster where Seamless is installed."""
    services = server.root / "services-bin"
    services.mkdir(mode=0o755)
    body = (VENV_BIN / "hashserver").read_text().split("\n", 1)[1]
    site = sysconfig.get_paths()["purelib"]
    script = services / "hashserver"
    script.write_text(f"#!{server.python}\nimport sys\nsys.path.insert(0, {site!r})\n{body}")
    script.chmod(0o755)
    server.write_file(".bashrc", f"export PATH={services}:{server.home / AGENT_BIN}:$PATH\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ss-bench-life-"))
    with SshServer.start(alias="benchlife", parent=Path(tempfile.gettempdir())) as server:
        real_services_on_path(server)
        env = setup_client(tmp, server)
        # `hostname` is what a Seamless client connects to (the client file's host): the
        # server's loopback address here; ssh goes to the alias.
        (Path(env["HOME"]) / ".seamless/clusters.yaml").write_text(
            f"{CLUSTER}:\n  type: local\n  frontends:\n"
            f"    - hostname: 127.0.0.1\n      ssh_hostname: {server.alias}\n"
            "      hashserver: {bufferdir: ~/data/buffers, network_interface: 127.0.0.1}\n")
        timed([str(VENV_BIN / "seamless-service"), "agent", "deploy", server.alias], env)
        os.environ.update({k: env[k] for k in ("HOME", "XDG_CACHE_HOME", "PATH")})
        os.environ.pop("REMOTE_HTTP_LAUNCHER_DIR", None)
        import remote_http_launcher

        from seamless_service import Host
        from seamless_service.client.config.resolve import resolve_service
        from seamless_service.client.config.selection import Selection

        config = resolve_service(Selection(service="hashserver", cluster=CLUSTER, project="bench")).config
        conf = {k: v for k, v in config.items() if k != "meta"}  # as seamless-remote passes it
        client_file = Path(env["HOME"]) / ".remote-http-launcher/client" / f"{config['key']}.json"
        seamless_config_args = ["--service", "hashserver", "--cluster", CLUSTER, "--project", "bench"]

        def launcher_restart() -> None:
            for command in ("stop", "rm"):
                subprocess.run([str(VENV_BIN / f"seamless-service-{command}"), *seamless_config_args], env=env,
                               capture_output=True, check=True)
            remote_http_launcher.run(conf)

        def launcher_check_remote() -> None:
            client_file.unlink(missing_ok=True)
            remote_http_launcher.run(conf)

        with Host(server.alias) as host:
            first = host.start(config)
            assert first["outcome"] in ("started", "already running"), first
            ours_start, ours_p99 = median_ms(lambda: host.start(config), args.runs * 5)
            remote_http_launcher.run(conf)  # writes the client file
            theirs_local, _ = median_ms(lambda: remote_http_launcher.run(conf), args.runs)
            theirs_remote, _ = median_ms(launcher_check_remote, max(3, args.runs // 4), warmup=1)
            restarts = max(3, args.runs // 4)
            ours_restart, _ = median_ms(lambda: host.restart(config), restarts, warmup=1)
            theirs_restart, _ = median_ms(launcher_restart, restarts, warmup=1)
            host.stop(config["key"])
        subprocess.run([str(VENV_BIN / "seamless-service"), "agent", "stop", server.alias], env=env,
                       capture_output=True)

    w = 66
    print(f"{'':{w}} {'median':>9}")
    print(f"{'start, already running: Host.start (agent, one round trip)':{w}} {ours_start:>7.1f} ms   "
          f"p99 {ours_p99:.1f} ms")
    print(f"{'remote_http_launcher.run, client file present (handshake only)':{w}} {theirs_local:>7.1f} ms   "
          f"{theirs_local / ours_start:.1f}x ours")
    print(f"{'remote_http_launcher.run, no client file (checks over ssh)':{w}} {theirs_remote:>7.1f} ms   "
          f"{theirs_remote / ours_start:.1f}x ours")
    print(f"{'restart: Host.restart (stop, rm, start and wait for running)':{w}} {ours_restart:>7.0f} ms")
    print(f"{'restart: seamless-service-stop + -rm + remote_http_launcher.run':{w}} {theirs_restart:>7.0f} ms   "
          f"{theirs_restart / ours_restart:.1f}x ours")


if __name__ == "__main__":
    main()
