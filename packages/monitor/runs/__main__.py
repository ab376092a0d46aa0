from coldcopy.functions.web import handle


def main(event, context=None):
    return handle("runs", event, context)
