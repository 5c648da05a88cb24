"""Rewards: answer checking, sandboxed code execution, RFT graders and LLM-as-a-judge.

Import the submodules you need (`score.rewards.math`, `score.rewards.judge`,
`score.rewards.graders`, `score.rewards.sandbox`, `score.rewards.code`); nothing is imported
here, so `import score.rewards` stays light. This package imports no model and no trainer.
"""
