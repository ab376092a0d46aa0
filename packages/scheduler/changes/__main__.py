from coldcopy.functions.changes import run


def main(event, context=None):
    return run(event, context)
