"""The test-hook seam (pipeline/runs/hooks.py): silent in production, and what a test installs reaches every point."""

from __future__ import annotations

from pipeline.runs import hooks


def test_without_hooks_points_do_nothing_and_ray_tasks_keep_their_environment(monkeypatch):
    monkeypatch.delenv(hooks.HOOKS_ENV, raising=False)
    monkeypatch.setenv("SPLICE_TEST_FAULTS", "kill-once=p1")  # a plan alone installs nothing
    hooks.point("pair.started", pair_id="p1", attempt=1, storage=None, pair_dir="/nowhere")
    assert hooks.runtime_env() is None


def test_an_installed_hook_module_sees_every_point_and_its_settings_travel_to_ray_workers(tmp_path, monkeypatch):
    module = tmp_path / "recording_hooks.py"
    module.write_text("CALLS = []\n\ndef hook(point, **context):\n    CALLS.append((point, context))\n")
    monkeypatch.setenv(hooks.HOOKS_ENV, str(module))
    monkeypatch.setenv("SPLICE_TEST_PLAN", "x")
    monkeypatch.setenv("SPLICE_OTHER", "not a test setting")
    hooks.point("pair.written", pair_id="p1", attempt=2)
    hooks.point("evaluate.before_save")
    assert hooks._module(str(module)).CALLS == [
        ("pair.written", {"pair_id": "p1", "attempt": 2}),
        ("evaluate.before_save", {}),
    ]
    assert hooks.runtime_env() == {"env_vars": {hooks.HOOKS_ENV: str(module), "SPLICE_TEST_PLAN": "x"}}
