from mldeploy.cli import main

raise SystemExit(main())
