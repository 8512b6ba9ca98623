def handler(event, context):
    """Answers with what it was given: JSON as JSON, anything else as text."""
    return event["data"]
