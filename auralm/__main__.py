from auralm.apps.cli import main

raise SystemExit(main())
