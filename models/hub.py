"""The Hugging Face hub: whether it is offline, and pushing an export folder to a hub repo."""
from __future__ import annotations

import os


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set (read now, not only when huggingface_hub was
    imported)."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or any(os.environ.get(k, "").upper() in {"1", "ON", "YES", "TRUE"}
                                           for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def push_export_to_hub(folder: str | os.PathLike, repo_id: str, private: bool = False,
                       commit_message: str = "Upload litbert export") -> str:
    """Create `repo_id` if needed and upload the export `folder`; RuntimeError naming the repo when that fails."""
    if hub_offline():
        raise RuntimeError(
            f"cannot push {folder} to the hub repo {repo_id!r}: HF_HUB_OFFLINE is set (offline mode); "
            "unset it on a machine with network access, or upload the folder later with `hf upload`"
        )
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    except Exception as err:  # network, authentication, permissions: all reported the same way
        raise RuntimeError(f"cannot push {folder} to the hub repo {repo_id!r}: {type(err).__name__}: {err}") from err
    return str(getattr(commit, "commit_url", commit))
