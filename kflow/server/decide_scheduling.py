"""The orchestrator's scheduling: resolve an activity's templates and queue it.

Scheduling renders the parameters (checked to be storable JSON of a sane
size) and the start time (``settings.delay`` / ``settings.scheduled_for``),
takes a buffered signal or starts waiting for one, and then wakes the queue
or arms a timer. A template or a time that cannot be resolved fails the
activity (``TEMPLATE_ERROR`` / ``INVALID_SCHEDULE``) instead.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import attrs

from kflow._serde import dumps, parse_datetime
from kflow.errors import TemplateError
from kflow.model.durations import parse_duration
from kflow.server.decide_base import MAX_PARAMETERS_BYTES, DeciderBase, S
from kflow.server.state import ActivityState, ArmTimer, ConsumeSignal, ErrorInfo, WakeQueue


class Scheduling(DeciderBase):
    """The part of a decision that schedules activities."""

    def schedule(self, key: str) -> None:
        """Resolve ``key``'s templates and queue it (or make it wait).

        An activity that waits for a signal has its parameters resolved when
        the signal arrives, so they can use ``SIGNAL.*``.
        """
        act = self.acts[key]
        settings = self.definition(key).settings
        iteration = self._next_iteration(act)
        wait_signal = None
        wait_timeout_at = None
        signal_data = None
        if settings.wait_for_signal is not None:
            wait = settings.wait_for_signal
            buffered = next(
                (
                    s
                    for s in self.state.signals
                    if s.activity_key == key
                    and s.event_name == wait.event_name
                    and s.id not in self._consumed
                ),
                None,
            )
            if buffered is not None:
                self._consumed.add(buffered.id)
                self._out.append(ConsumeSignal(signal_id=buffered.id))
                signal_data = dict(buffered.data or {})
            else:
                wait_signal = wait.event_name
                if wait.timeout_seconds is not None:
                    wait_timeout_at = self.ctx.now + dt.timedelta(seconds=wait.timeout_seconds)
        context = self.context_for(key, iteration, signal_data)
        try:
            available_at = self._start_time(settings.delay, settings.scheduled_for, context)
            parameters = None if wait_signal else self._parameters(key, context)
        except (TemplateError, ValueError, TypeError, OverflowError) as exc:
            self._fail_scheduling(key, iteration, exc)
            return
        due = available_at or self.ctx.now
        waiting = wait_signal is not None or due > self.ctx.now
        scheduled = attrs.evolve(
            act,
            status=S.WAITING if waiting else S.PENDING,
            iteration=iteration,
            attempt=1,
            parameters=parameters,
            available_at=due,
            wait_signal=wait_signal,
            wait_timeout_at=wait_timeout_at,
            signal_data=signal_data,
            error=None,
            failure_handled=False,
            completed_at=None,
        )
        self.put(scheduled, new_attempt=True)
        self.emit(
            "activity.scheduled",
            key,
            iteration=iteration,
            status=scheduled.status.value,
            available_at=due,
            waits_for_signal=wait_signal,
        )
        self._after_schedule(scheduled)

    def _parameters(self, key: str, context: Mapping[str, Any]) -> Any:
        """Rendered parameters, checked to be storable JSON of a sane size.

        Raises:
            TemplateError: rendering failed, or the result is not JSON (an
                integer beyond 64 bits, an object) or is too large.
        """
        rendered = self.ctx.templates.render(
            dict(self.definition(key).parameters), context, path="parameters"
        )
        try:
            size = len(dumps(rendered))
        except (TypeError, ValueError) as exc:
            raise TemplateError(
                f"parameters: the rendered value cannot be stored as JSON: {exc}"
            ) from exc
        if size > MAX_PARAMETERS_BYTES:
            raise TemplateError(
                f"parameters: the rendered value is {size} bytes, above the "
                f"limit of {MAX_PARAMETERS_BYTES}"
            )
        return rendered

    def _fail_scheduling(self, key: str, iteration: int, exc: Exception) -> None:
        code = "TEMPLATE_ERROR" if isinstance(exc, TemplateError) else "INVALID_SCHEDULE"
        self.put(attrs.evolve(self.acts[key], iteration=iteration, attempt=1))
        self.fail_now(key, ErrorInfo(code=code, message=str(exc)))
        self.loop_back(key)

    def _after_schedule(self, act: ActivityState) -> None:
        if act.status == S.PENDING:
            self._out.append(WakeQueue(queue=self.definition(act.key).worker))
            return
        at = act.wait_timeout_at if act.wait_signal is not None else act.available_at
        if at is not None:
            self._out.append(ArmTimer(at=at))

    def _start_time(
        self, delay: str | None, scheduled_for: str | None, context: Mapping[str, Any]
    ) -> dt.datetime | None:
        if delay is not None:
            text = str(self.ctx.templates.render(delay, context, path="settings.delay"))
            try:
                return self.ctx.now + parse_duration(text)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"settings.delay: {exc}") from exc
            except OverflowError:
                raise ValueError(f"settings.delay: {text!r} is beyond the year 9999") from None
        if scheduled_for is not None:
            value = self.ctx.templates.render(scheduled_for, context, path="settings.scheduled_for")
            if isinstance(value, dt.datetime):
                return value
            try:
                return parse_datetime(str(value))
            except (ValueError, OverflowError) as exc:
                raise ValueError(
                    f"settings.scheduled_for: {value!r} is not a usable RFC 3339 time ({exc})"
                ) from exc
        return None
