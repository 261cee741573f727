from __future__ import annotations

import types

import enclave
import enclave.spec


def test_public_api_is_curated() -> None:
    exported = set(enclave.__all__)
    assert exported <= set(dir(enclave))
    public = {
        name
        for name, value in vars(enclave).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    # nothing public leaks besides the curated names (and the __future__ feature flag)
    assert public - {"annotations"} == exported - {"__version__"}
    for name in exported - {"__version__"}:
        assert getattr(enclave, name).__module__.startswith("enclave."), name


def test_spec_package_exports() -> None:
    for name in enclave.spec.__all__:
        assert hasattr(enclave.spec, name), name
