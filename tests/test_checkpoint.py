import pytest
import torch

from lenet_hpo.checkpoint import load_checkpoint, save_checkpoint
from lenet_hpo.config import BASELINE
from lenet_hpo.errors import CheckpointError
from lenet_hpo.training import train

FAST = BASELINE.replace(activation="relu", pooling="max", optimizer="adam", lr=3e-3, batch_size=64, epochs=3)


def test_checkpoint_round_trip(tmp_path, synthetic):
    result = train(FAST.replace(epochs=1), synthetic, device="cpu")
    path = save_checkpoint(tmp_path / "m.pt", result.model, FAST, synthetic.meta(), {"note": "x"})
    raw = torch.load(path, weights_only=True)  # plain tensors and values only
    assert raw["config"] == FAST.to_dict()
    ck = load_checkpoint(path)
    assert ck.config == FAST and ck.extra == {"note": "x"} and ck.data["dataset"] == "synthetic"
    x = torch.randn(4, 1, 32, 32)
    result.model.eval()
    assert torch.allclose(ck.model(x), result.model(x), atol=1e-6)


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_with_pickle_payload_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "state_dict": {}, "config": {}, "data": {}, "evil": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused") as exc:
        load_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out
    assert "weights_only" not in str(exc.value) and "will likely succeed" not in str(exc.value)  # torch's advice


def test_checkpoint_missing_or_garbage(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(junk)
