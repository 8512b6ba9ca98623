def handler(event, context):
    """Greets whoever the JSON body names, or the world."""
    data = event["data"]
    name = data.get("name", "world") if isinstance(data, dict) else "world"
    return f"hello {name}\n"
