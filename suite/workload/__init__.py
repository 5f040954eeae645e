"""The training workload: a GPT decoder, synthetic tokens and the timed DeepSpeed loop."""
