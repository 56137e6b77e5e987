"""Keep the console to what a researcher reads: our progress bars, budget line and tables."""

from __future__ import annotations

import logging
import warnings


def quiet_third_party() -> None:
    """Silence per-file progress bars and start-up chatter of the libraries we drive."""
    import datasets
    import transformers

    datasets.disable_progress_bars()  # "Saving the dataset" per cached split
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" / "Writing model shards"
    # Device banners and tips; warnings from Lightning still come through.
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("pytorch_lightning.trainer.connectors.checkpoint_connector").setLevel(logging.WARNING)
    # Expected here: validation runs only when the runner asks for it, data loads in the main
    # process on purpose (tiny batches), and a deprecation inside Lightning's own pytree helper.
    for pattern in (
        ".*defined a `validation_step` but have no `val_dataloader`.*",
        ".*does not have many workers.*",
        ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
        # GRPO checkpoints after its optimizer step on purpose (the state a resume continues from).
        ".*ModelCheckpoint with manual optimization and every_n_train_steps.*",
        # Evaluation metrics are computed from items gathered from every rank, so they are already
        # equal on all ranks: no sync_dist reduction is needed.
        ".*It is recommended to use `self.log\\('eval/.*sync_dist=True.*",
        ".*It is recommended to use `self.log\\('progress/.*sync_dist=True.*",
    ):
        warnings.filterwarnings("ignore", pattern)
