"""A faithful fake of Marketo's bulk import API, for dropzone's tests and demos.

Besides Identity and the bulk endpoints it serves what a client reads before it
spends a queue slot: Describe Lead2, Describe Custom Object, Describe Program
Member, Get List by Id, Get Lead Partitions, Get Program by Id and Get Channel
by Name, built from the same fields and catalogue the imports enforce.

An independent reading of the Marketo docs: nothing here imports from the
rest of dropzone, so a misreading in the client cannot be copied into the
fake and hide itself.

    from dropzone.simulator import Fault, SimConfig, Simulator

    with Simulator(SimConfig(client_id="cid", client_secret="csecret", instant=True)) as sim:
        sim.base_url        # REST endpoint; bulk calls under /bulk/...
        sim.identity_url    # + "/oauth/token"
        sim.inject("606", times=2, endpoint="import")
        sim.arm(Fault("http429", endpoint="status", times=3, retry_after=2))
        sim.submissions(); sim.imported_rows(); sim.calls(); sim.wait_idle(5)
        sim.add_foreign_calls(900); sim.calls_today()   # other integrations' share of the daily quota

``python -m dropzone.simulator`` (or ``dropzone simulate``) runs it standalone.
Faults are armed from Python only (there is no admin endpoint); the kinds,
their parameters and what each looks like on the wire are listed in ``faults``.
"""

from .catalog import DEFAULT_CHANNELS, DEFAULT_LISTS, DEFAULT_PROGRAMS
from .config import DEFAULT_CUSTOM_OBJECTS, DEFAULT_LEAD_FIELDS, FieldSpec, SimConfig
from .faults import Fault
from .simulator import Simulator

__all__ = [
    "DEFAULT_CHANNELS",
    "DEFAULT_CUSTOM_OBJECTS",
    "DEFAULT_LEAD_FIELDS",
    "DEFAULT_LISTS",
    "DEFAULT_PROGRAMS",
    "Fault",
    "FieldSpec",
    "SimConfig",
    "Simulator",
]
