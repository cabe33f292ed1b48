"""The built-in templates: simple-test, conversation, langgraph-workflow and task."""
