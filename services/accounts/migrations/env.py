from coffeeping.common.migrations import run_env

run_env("accounts")
