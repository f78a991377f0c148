"""`mldeploy rehearse`: a model repo's own workflows run under act on this machine, offline.

kit.py finds the kit's checkout and copies it for act; act.py builds act's command line (the kit and the
stand-ins mapped) and reads which jobs ran; events.py picks the workflow and builds GitHub's event for
it; fake_github.py answers for GitHub's REST API; standins/ replace the remote actions; rehearse.py runs
it all and says what happened.
"""
