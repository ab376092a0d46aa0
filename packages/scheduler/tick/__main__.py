from coldcopy.functions.tick import run


def main(event, context=None):
    return run(event, context)
