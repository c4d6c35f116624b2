# Offline, loopback-only defaults for local runs, tests and CI (sourced by the Makefile).
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0   # Ray binds to 127.0.0.1 only
export TOKENIZERS_PARALLELISM=false
export RAY_USAGE_STATS_ENABLED=0
