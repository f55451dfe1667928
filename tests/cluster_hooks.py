"""Set-up hooks for the Ray workers of the test cluster (``runtime_env={"worker_process_setup_hook": ...}``)."""


def refuse_dataset_reads() -> None:
    """Make every dataset read in this worker process fail: the data reaches the workers through the object store,
    tokenised once by the driver, or not at all."""
    from privtune_ray.data import registry

    def refuse(*args, **kwargs):
        raise RuntimeError("a Ray worker read the dataset")

    registry._load_local = registry._load_hub = refuse
