"""The run directory's layout and its finished / started / resumable checks."""

from replaytune import rundir


def test_checkpoint_steps_ignore_temporaries_and_incomplete(tmp_path):
    run = tmp_path / "run"
    assert rundir.checkpoint_steps(run) == [] and not rundir.is_started(run)
    for step, complete in ((4, True), (12, True), (20, False)):
        d = rundir.checkpoint_dir(run, step)
        d.mkdir(parents=True)
        if complete:
            (d / rundir.STATE).write_text("{}")
    (run / rundir.CHECKPOINTS / ".tmp-step-00000024").mkdir()
    assert rundir.checkpoint_dir(run, 12).name == "step-00000012"
    assert rundir.checkpoint_steps(run) == [4, 12]
    assert rundir.step_of("step-00000012") == 12 and rundir.step_of(".tmp-step-00000024") is None
    assert rundir.is_started(run) and rundir.is_resumable(run) and not rundir.is_finished(run)
    (run / rundir.RECORD).write_text('{"steps": 20}')
    assert rundir.is_finished(run) and not rundir.is_resumable(run)
    assert rundir.read_record(run) == {"steps": 20}


def test_started_without_checkpoint_is_not_resumable(tmp_path):
    (tmp_path / rundir.METRICS).write_text('{"step": 1}\n')  # killed before the first checkpoint
    assert rundir.is_started(tmp_path) and not rundir.is_resumable(tmp_path)
