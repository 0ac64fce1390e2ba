"""The project's own constructs, one logical unit per module.

(Named ``components`` because a top-level ``constructs`` package would shadow the
``constructs`` library that aws-cdk-lib imports.)
"""
