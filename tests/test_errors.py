"""One root for the toolkit's own errors: every class derives from AvatarError AND keeps the built-in base a
caller would catch; the entry points' own classes (app, eval) follow the same rule."""

from __future__ import annotations

import pickle

import pytest

import avatar.errors as E


@pytest.mark.parametrize(("cls", "builtin"), [
    (E.InputError, ValueError), (E.ImageReadError, ValueError), (E.VideoReadError, ValueError),
    (E.NoFaceError, ValueError), (E.FaceTooSmallError, ValueError), (E.ConfigError, ValueError),
    (E.ModelNotFoundError, FileNotFoundError), (E.UnknownModelIdError, KeyError),
    (E.UnknownModelIdError, FileNotFoundError), (E.AssetNotFoundError, FileNotFoundError),
    (E.AssetVerificationError, RuntimeError), (E.FormatError, ValueError),
    (E.UnsafePickleError, pickle.UnpicklingError), (E.StateDictMismatchError, ValueError),
    (E.CheckpointMismatchError, E.StateDictMismatchError),
])
def test_every_error_is_an_avatar_error_and_its_builtin(cls: type, builtin: type) -> None:
    assert issubclass(cls, E.AvatarError) and issubclass(cls, builtin)
    assert cls.__name__ in E.__all__


def test_unknown_model_id_reads_as_a_sentence_not_a_quoted_key() -> None:
    err = E.UnknownModelIdError("unknown model id 'x'; known ids: a, b")
    assert str(err) == "unknown model id 'x'; known ids: a, b"


def test_io_errors_are_the_same_classes() -> None:
    import avatar.io.errors as io_errors

    assert io_errors.InputError is E.InputError and io_errors.NoFaceError is E.NoFaceError


def test_entry_point_error_classes() -> None:
    from avatar.pipelines.cache import ModelUnavailableError
    from eval.prepare import InputNotFoundError, MattingUnavailableError, MissingRawFilesError, UnknownIdError

    for cls, builtin in ((ModelUnavailableError, RuntimeError), (MissingRawFilesError, FileNotFoundError),
                         (MattingUnavailableError, FileNotFoundError), (InputNotFoundError, FileNotFoundError),
                         (UnknownIdError, KeyError)):
        assert issubclass(cls, E.AvatarError) and issubclass(cls, builtin), cls
    assert issubclass(MattingUnavailableError, E.AssetNotFoundError)
    assert issubclass(InputNotFoundError, E.InputError) and issubclass(UnknownIdError, E.InputError)
    assert str(UnknownIdError("unknown HDTF id(s) X")) == "unknown HDTF id(s) X"


def test_eval_errors_the_user_causes_are_exit_1() -> None:
    """PredictionCheckError, CacheMismatchError, MissingWeightsError and the option errors are the user's
    problems: they are AvatarErrors, so ``eval.run`` exits 1 for them."""
    from eval.cache import CacheMismatchError
    from eval.data import PredictionCheckError
    from eval.metrics.base import EmptyMetricError
    from eval.metrics.weights import MissingWeightsError

    for cls in (PredictionCheckError, CacheMismatchError, MissingWeightsError, EmptyMetricError):
        assert issubclass(cls, E.AvatarError), cls


def test_cuda_out_of_memory_is_the_users_problem_not_a_bug(caplog: pytest.LogCaptureFixture) -> None:
    import torch

    from avatar.cli import EXIT_ERROR, run_guarded

    def oom() -> int:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert run_guarded(oom, command="avatar reenact") == EXIT_ERROR
    assert "ran out of memory" in caplog.records[-1].getMessage() and "--batch-size" in caplog.records[-1].getMessage()
