"""Sampling: jitted KV-cache generation and multi-turn rollouts (needs only `score.models`)."""

from score.sampling.filters import filter_logits, sample_token, top_k_filter, top_p_filter
from score.sampling.sampler import (
    FINISH_LENGTH,
    FINISH_STOP,
    Continuation,
    SampleArrays,
    Samples,
    bucket_shape,
    compile_count,
    continues_cache,
    find_stop_string,
    generate,
    generate_arrays,
    left_pad,
)
