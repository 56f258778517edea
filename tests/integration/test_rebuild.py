"""Rebuild into a fresh table set while a service keeps serving the old one, then switch."""

from __future__ import annotations

from datetime import timedelta

from services.ledger.application.verify import verify
from services.ledger.bootstrap import build_ledger
from services.ledger.domain.clock import FixedClock
from tests.integration.test_ledger_store import PROGRAM, T0, _file, _purchase


def test_rebuild_switches_a_running_service_to_the_rebuilt_tables(
    store_env: dict[str, str],
) -> None:
    clock = FixedClock(T0)
    service = build_ledger(program=PROGRAM, clock=clock, env=store_env)
    operator = build_ledger(program=PROGRAM, clock=clock, env=store_env)
    try:
        service.app.apply_batch([_file(_purchase("e-1", "m-1", "o-1", 5000))])
        service.projection.run()
        assert service.view.tracking_key == "view_ledger"

        prefix, count = operator.rebuild()
        assert (prefix, count) == ("view_b_", 2)
        # The service kept serving the old tables and keeps writing meanwhile.
        clock.advance(timedelta(days=3))
        service.app.apply_batch([_file(_purchase("e-2", "m-1", "o-2", 1000, clock.now()))])
        service.projection.run()
        old = service.balance("m-1")
        assert service.use_active_view() is True  # what its scheduler does every tick
        assert service.use_active_view() is False
        assert service.view.tracking_key == "view_b_ledger"
        service.projection.run()  # the new tables catch up from their own position
        assert service.balance("m-1") == old
        assert verify(service.app, service.view).ok

        assert operator.rebuild()[0] == "view_"  # and back again, rebuilt from zero
        service.use_active_view()
        assert service.balance("m-1") == old
        assert verify(service.app, service.view).ok
    finally:
        service.close()
        operator.close()
