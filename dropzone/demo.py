"""``dropzone demo``: the daemon and the bundled simulator in one process.

For a newcomer with no Marketo account: it starts one simulator per
configured instance, where its ``endpoint`` points (it must be
http://127.0.0.1:PORT), with its credentials, drops sample files into the
first inbox (``test_demo.csv`` goes to the ``sandbox`` instance of the
example configuration), and runs the daemon until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from dropzone import defaults as D
from dropzone.config import Config
from dropzone.errors import ConfigError

log = structlog.get_logger("dropzone.demo")

SAMPLES = {
    # One lead has no email: Marketo fails it, and it shows up in the failures file with its line.
    "leads_demo.csv": (
        "email,firstName,lastName,company\n"
        "ann.lee@example.com,Ann,Lee,\"Lee, Lee & Partners\"\n"
        ",Bob,NoEmail,Acme\n"
        "carla@example.com,Carla,\"Multi\nLine\",Initech\n"
    ),
    "cars_demo.tsv": "color\tmake\tmodel\tvin\nred\tbmw\t2002\tWBA4R7C55HK895912\nblue\tbmw\t325i\tWBS3U9C52HP970604\n",
    # An invalid email is a warning: the member is still imported.
    "members_demo.ssv": "email;firstName\ndan@example.com;Dan\nnot-an-email;Eve\n",
    # The example configuration sends test_*.csv to its second instance, "sandbox".
    "test_demo.csv": "email,firstName\nfrank@example.com,Frank\n",
    # A partner's own column names, mapped by the route's columns; its constant leadSource is added.
    "expo_demo.csv": (
        "E-mail Address,First Name,Internal Ref\n"
        "gina@example.com,Gina,A-17\n"
        "hal@example.com,Hal,A-18\n"
    ),
    # A typo in the header: the pre-flight rejects it before it takes a place in Marketo's queue.
    "leads_typo.csv": "email,firstNme\nivy@example.com,Ivy\n",
}


def write_samples(inbox: Path) -> list[Path]:
    written = []
    for name, text in SAMPLES.items():
        # Write under a temporary name, then rename: the upload convention we recommend to partners.
        tmp = inbox / f"{name}.filepart"
        tmp.write_text(text, encoding="utf-8")
        tmp.rename(inbox / name)
        written.append(inbox / name)
    return written


def run_demo(config: Config, stop: threading.Event, *, samples: bool = True) -> None:
    from dropzone.daemon import Daemon
    from dropzone.simulator import SimConfig, Simulator

    sims = []
    for name, settings in config.all_instances().items():
        url = urlsplit(settings.endpoint)
        if url.scheme != "http" or url.hostname not in ("127.0.0.1", "localhost") or not url.port:
            key = "marketo" if name == D.DEFAULT_INSTANCE else f"instances.{name}"
            raise ConfigError(
                f"{config.source}: {key}.endpoint: the demo runs the simulator on this machine, "
                f"so the endpoint must be http://127.0.0.1:PORT, not {settings.endpoint!r}"
            )
        sims.append(SimConfig(
            client_id=settings.client_id,
            client_secret=settings.client_secret,
            port=url.port,
            queued_seconds=0.5,
            import_seconds_per_job=1.0,
            record_path=config.state_dir / f"simulator-record.{name}.jsonl",
        ))
    config.state_dir.mkdir(parents=True, exist_ok=True)
    for inbox in config.inboxes:
        inbox.path.mkdir(parents=True, exist_ok=True)
        inbox.outbox.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as running:
        for name, sim_config in zip(config.all_instances(), sims, strict=True):
            sim = running.enter_context(Simulator(sim_config))
            log.info("simulator_started", instance=name, url=sim.base_url, record=str(sim_config.record_path))
        daemon = Daemon(config, stop=stop)
        if samples and config.inboxes:
            inbox = config.inboxes[0]
            names = [p.name for p in write_samples(inbox.path)]
            log.info("samples_dropped", inbox=str(inbox.path), files=names, outbox=str(inbox.outbox))
        daemon.run()
