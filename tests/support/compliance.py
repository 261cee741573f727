"""A compliant set of compliance facts, for unit tests of the baseline's rules.

``compliance_facts.json`` was recorded from a real enclave brought up with ``enclave up``
(paths and name rewritten to the ``demo`` defaults), then the parts this host cannot show
compliant were set to what a hardened host reports: the Docker daemon's settings, kernel
settings, auditd, a recent passed kill drill and a signed audit log with records.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from enclave.compliance import Facts

_DATA = json.loads((Path(__file__).with_name("compliance_facts.json")).read_text())


def compliant_facts() -> Facts:
    data = copy.deepcopy(_DATA)
    instances = {k: [(label, v) for label, v in items] for k, items in data["instances"].items()}
    values = data["values"]
    # one object per container and network, as collect() makes them
    values["containers"] = [v for _, v in instances["container"]]
    values["networks"] = [v for _, v in instances["network"]]
    return Facts(values=values, errors=dict(data["errors"]), instances=instances)


def instance(facts: Facts, root: str, name_part: str) -> dict[str, Any]:
    """The facts of the one container or network whose name contains ``name_part``."""
    (found,) = [v for label, v in facts.instances[root] if name_part in label]
    return found
