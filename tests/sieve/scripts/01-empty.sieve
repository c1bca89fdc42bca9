# An empty script: implicit keep only.
