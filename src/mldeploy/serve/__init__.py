"""The serving runtime: `mldeploy serve` (HTTP, every cloud's contract) and a Lambda handler."""


def lambda_handler(event: object, context: object) -> dict:
    """AWS Lambda entry (`mldeploy.serve.lambda_handler`): API Gateway, function URLs, direct invokes."""
    from mldeploy.serve.lambda_ import handle

    return handle(event, context)
