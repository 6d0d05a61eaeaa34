"""Directory swaps: a killed writer's temporaries are removed and a cut swap is undone."""

import os

from replaytune import fsio


def test_recover_restores_the_old_copy_when_a_swap_was_cut_between_its_renames(tmp_path):
    dest = tmp_path / "store"
    old = tmp_path / ".store.old-999999"  # the previous store, moved aside by a process now dead
    old.mkdir()
    (old / "meta.json").write_text("{}")
    new = tmp_path / ".store.tmp-999999-x1"  # the new one, complete or not: never trusted
    new.mkdir()
    live = tmp_path / f".store.tmp-{os.getpid()}-y2"  # a build of a live process: kept
    live.mkdir()
    fsio.recover_dir(dest)
    assert (dest / "meta.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["store", live.name])


def test_temp_dir_cleans_dead_leftovers_and_names_its_owner(tmp_path):
    dest = tmp_path / "model"
    dest.mkdir()
    (tmp_path / ".model.tmp-abcdef").mkdir()  # an older, pid-less temporary
    (tmp_path / ".model.old-999999").mkdir()  # killed before deleting the old copy
    tmp = fsio.temp_dir(dest)
    assert tmp.name.startswith(f".model.tmp-{os.getpid()}-")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", tmp.name])


def test_public_path_shows_what_a_temporary_becomes():
    from replaytune.fsio import public_path

    assert public_path("ro/.store.tmp-18081-x1y2ab") == "ro/store"
    assert public_path("/a/.store.tmp-18081-x1y2/train/tokens.bin") == "/a/store/train/tokens.bin"
    assert public_path("/a/.store.old-18081") == "/a/store"
    assert public_path("run/checkpoints/.tmp-step-00000004/rng-0.pt") == "run/checkpoints/step-00000004/rng-0.pt"
    assert public_path("out/.record.json.ab12cd_4") == "out/record.json"  # write_bytes' temporary file
    assert public_path("/x/.hidden/.config") == "/x/.hidden/.config"  # not a temporary: as it is
