"""Language-model policies that reward themselves: GRPO with group- and logit-aware rewards,
label-free rewards, a collapse monitor, and a CPU testbed (PyTorch, the `lm` extra).

    grpo.py         GRPO / Dr. GRPO math and the `lm-train` loop
    rewards.py      the reward API (whole groups, declared needs) and every reward
    model.py        the tiny transformer, the Hugging Face wrapper, loading and saving
    testbed.py      generated arithmetic tasks, task files, answers, `lm-pretrain`
    collapse.py     label-free reward against held-out accuracy: peak and collapse steps
    trl_adapter.py  the text-only rewards as TRL GRPOTrainer reward functions
    commands.py     the two commands

Importing this package does not import PyTorch; its modules do.
"""
