"""The private RLlib/Ray names ``rayrm.rl.rllib_compat`` relies on that need a running Ray: the
module state file where RLlib saves it, the trainable's storage and counters, and the in-process
trainer without the cleaner and an unused dataset manager (the rest:
tests/unit/rl/test_rllib_compat.py)."""

from __future__ import annotations

from helpers import make_config

from rayrm.rl import rllib_compat
from rayrm.rl.algorithm import build_algo_config


def test_module_state_file_is_where_rllib_saves_it(
    ray_local, tiny_policy_dir, prompts_file, tmp_path
):
    algo = build_algo_config(make_config(tiny_policy_dir, prompts_file, tmp_path)).build_algo()
    try:
        ckpt = tmp_path / "ckpt"
        algo.save_to_path(str(ckpt))
    finally:
        algo.stop()
    assert (ckpt / rllib_compat.MODULE_STATE_FILE).is_file()


def test_trainable_storage_and_counters(ray_local, tmp_path, monkeypatch):
    """What ``NeverLoseCheckpoints`` reaches in Tune: a Trainable's counters and storage, and the
    storage context's checkpoint index and trial folder. (A StorageContext needs a running Ray:
    without ``ray_local`` the test passed only after another one had started it.)"""
    monkeypatch.chdir(tmp_path)  # a Trainable with storage changes into its trial folder
    from ray import tune
    from ray.train._internal.storage import StorageContext

    class Counting(tune.Trainable):
        def step(self):
            return {}

    storage = StorageContext(
        storage_path=str(tmp_path), experiment_dir_name="e", trial_dir_name="t"
    )
    trainable = Counting(config={}, storage=storage)
    try:
        trainable.train()
        assert rllib_compat.tune_counters(trainable)["training_iteration"] == 1
        assert rllib_compat.trial_dir(trainable) == tmp_path / "e" / "t"
        rllib_compat.skip_checkpoint_indices(trainable, 4)
        assert storage.current_checkpoint_index == 4
    finally:
        trainable.stop()


def test_in_process_trainer_drops_the_cleaner_and_an_unused_dataset_manager(ray_local):
    """On an in-process Ray, a stage's TorchTrainer starts no placement-group cleaner (which
    may ask another Ray's State API and kill a healthy run) and, given no Ray Datasets (rayrm's
    stages read their data themselves), no DatasetManager actor; given datasets, it keeps them."""
    import ray.data
    from ray.train import ScalingConfig

    trainer = rllib_compat.torch_trainer_class()
    assert trainer.__name__ == "InProcessTorchTrainer"

    def callbacks(**kwargs) -> set[str]:
        built = trainer(lambda: None, scaling_config=ScalingConfig(num_workers=1), **kwargs)
        return {type(c).__name__ for c in built._create_default_callbacks()}

    plain = callbacks()
    assert "BackendSetupCallback" in plain
    assert not {"PlacementGroupCleanerCallback", "DatasetsCallback"} & plain
    assert "DatasetsCallback" in callbacks(datasets={"train": ray.data.range(4)})
