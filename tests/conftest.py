import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none is visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
    """A random-init model with a 512-token context written as `snowtrain export` writes it,
    with a real tokenizer (the evaluation tests' model; test_serve.py has its own)."""
    pytest.importorskip("transformers")
    from tiny_hf import train_code_tokenizer, write_tiny_hf_model
    tok_path = train_code_tokenizer(tmp_path_factory.mktemp("tok"))
    return write_tiny_hf_model(tmp_path_factory.mktemp("hf"), tok_path, 512)


@pytest.fixture(scope="module")
def keep_torch_threads():
    """Restores torch's thread count (the local evaluation backend picks 1 for tiny models)."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
