"""The commands: the command line (``cli``, with its value types in ``cli_values``), the runners it calls
(``certify_run``, ``attack_run``, ``inspect``), and what they share (``loading``, ``logits``, ``report``,
``plot``, ``progress``). The only layer that parses strings and prints."""
