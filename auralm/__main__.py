from auralm.cli import main

raise SystemExit(main())
